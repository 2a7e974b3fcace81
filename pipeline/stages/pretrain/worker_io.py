"""What the pretrain stage and its training worker exchange, as validated records.

- ``WorkerSpec``: written by the stage to ``spec.json``, read by every rank.
- ``WorkerEvent``: one line of the worker's stdout per log step or eval point, ``[dapt-event]``
  followed by JSON; the stage parses it into this model (no log text is parsed).
- ``WorkerSummary``: written by rank 0 to ``summary.json`` when training ends, with the
  checkpoint choice (``Selection``) when ``select_checkpoint`` is on.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from pipeline.config import PretrainConfig

EVENT_PREFIX = "[dapt-event] "


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkerSpec(_Record):
    config: PretrainConfig
    ds_config: dict[str, Any]
    tokenizer_dir: str
    base_dir: str | None
    base_tokenizer_dir: str | None
    vocab_size: int
    eos_id: int
    pad_id: int
    general_eval: bool
    out_dir: str


class WorkerEvent(_Record):
    kind: Literal["step", "eval", "resumed", "stopped"]
    step: int
    max_steps: int
    loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    heldout_loss: float | None = None
    general_loss: float | None = None
    message: str = ""

    def line(self) -> str:
        return EVENT_PREFIX + self.model_dump_json(exclude_none=True)

    def describe(self) -> str:
        if self.message:
            return self.message
        parts = [f"step {self.step}/{self.max_steps}"]
        for name in ("loss", "heldout_loss", "general_loss"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name.replace('_', ' ')} {value:.4f}")
        if self.lr is not None:
            parts.append(f"lr {self.lr:.2e}")
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:.0f} tok/s")
        if self.eta_s is not None:
            parts.append(f"eta {self.eta_s:.0f}s")
        return " ".join(parts)

    @classmethod
    def parse(cls, line: str) -> WorkerEvent | None:
        """The event in one stdout line, or None for any other line."""
        _, sep, payload = line.partition(EVENT_PREFIX)
        return cls.model_validate(json.loads(payload)) if sep else None


class Candidate(_Record):
    step: int  # 0: the base model before training
    eval_loss: float
    general_loss: float | None = None
    domain_change: float = 0.0  # relative to step 0: -0.05 is a 5% lower dev loss
    general_change: float | None = None
    within_limit: bool = True


class Selection(_Record):
    rule: str
    max_general_degradation: float
    candidates: list[Candidate]
    chosen_step: int
    within_limit: bool


class WorkerSummary(_Record):
    steps: int
    tokens_trained: int
    params: int
    world_size: int
    final_train_loss: float
    eval_loss: float
    eval_perplexity: float
    general_eval_loss: float | None = None
    new_embeddings: int = 0
    tokens_per_s: float
    # the accelerator's peak: torch's allocator on a GPU, the process's peak RSS on a CPU
    peak_memory_gb: float | None = None
    resumed_from_step: int = 0
    param_digests: list[str | None]
    checkpoint: str
    selection: Selection | None = None

    def metrics(self) -> dict[str, float]:
        names = ("final_train_loss", "eval_loss", "eval_perplexity", "general_eval_loss",
                 "tokens_per_s")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


SELECTION_RULE = ("the eval point with the lowest domain dev loss among those whose general dev "
                  "loss rose by at most max_general_degradation over the base model's (step 0); "
                  "when none qualifies, the one whose general loss rose least")


def choose(candidates: list[Candidate], max_general_degradation: float) -> Selection:
    """Apply ``SELECTION_RULE`` to the trained eval points (step > 0); step 0 is the base."""
    base = next(c for c in candidates if c.step == 0)
    scored = []
    for c in candidates:
        domain = c.eval_loss / base.eval_loss - 1.0
        general = (c.general_loss / base.general_loss - 1.0
                   if c.general_loss is not None and base.general_loss else None)
        within = general is None or general <= max_general_degradation
        scored.append(c.model_copy(update={"domain_change": domain, "general_change": general,
                                           "within_limit": within}))
    trained = [c for c in scored if c.step > 0]
    if not trained:
        raise ValueError("checkpoint choice: no trained eval point to choose from")
    ok = [c for c in trained if c.within_limit]
    chosen = (min(ok, key=lambda c: (c.eval_loss, -c.step)) if ok else
              min(trained, key=lambda c: (c.general_change or 0.0, -c.step)))
    return Selection(rule=SELECTION_RULE, max_general_degradation=max_general_degradation,
                     candidates=scored, chosen_step=chosen.step, within_limit=bool(ok))
