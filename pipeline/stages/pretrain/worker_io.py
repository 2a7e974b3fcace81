"""What the pretrain stage and its training worker exchange, as validated records.

- ``WorkerSpec``: written by the stage to ``spec.json``, read by every rank.
- ``WorkerEvent``: one line of the worker's stdout per log step or eval point, ``[dapt-event]``
  followed by JSON; the stage parses it into this model (no log text is parsed).
- ``WorkerSummary``: written by rank 0 to ``summary.json`` when training ends, with the
  checkpoint choice (``Selection``) when ``select_checkpoint`` is on.
- ``Reference``: what the checkpoint choice measures the general dev loss against, computed by
  the stage before training (``reference.py``): the control's loss on the same sequences, or
  the base model's (step 0).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from pipeline.config import PretrainConfig

EVENT_PREFIX = "[dapt-event] "


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reference(_Record):
    """The reference of the checkpoint rule's general dev loss: ``control`` (the control
    model's mean token loss on the run's own general dev sequences, ``general_loss``) or
    ``base`` (step 0), with ``note`` saying why a run with a control uses the base."""

    kind: Literal["base", "control"]
    control_key: str | None = None
    general_loss: float | None = None
    sequences: int = 0
    note: str | None = None


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
    reference: Reference | None = None  # None: the base (step 0), no control to compare with


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
    general_change: float | None = None  # relative to step 0, as domain_change
    general_change_vs_control: float | None = None  # relative to the control's (reference)
    within_limit: bool = True


class Selection(_Record):
    rule: str
    max_general_degradation: float
    candidates: list[Candidate]
    chosen_step: int
    within_limit: bool
    reference: Literal["base", "control"] = "base"  # what the general limit is measured from
    control_key: str | None = None  # the control artifact of this run (compared or not)
    control_general_loss: float | None = None  # its loss on the same general dev sequences
    reference_note: str | None = None  # why a run with a control compared with the base


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
    checkpoint: str | None  # None: keep_final_checkpoint off (none kept after the export)
    selection: Selection | None = None

    def metrics(self) -> dict[str, float]:
        names = ("final_train_loss", "eval_loss", "eval_perplexity", "general_eval_loss",
                 "tokens_per_s")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


SELECTION_RULE = ("the eval point with the lowest domain dev loss among those whose general dev "
                  "loss rose by at most max_general_degradation over the base model's (step 0); "
                  "when none qualifies, the one whose general loss rose least")
SELECTION_RULE_CONTROL = (
    "the eval point with the lowest domain dev loss among those whose general dev loss is at "
    "most max_general_degradation above the control model's on the same general dev sequences; "
    "when none qualifies, the one whose general loss is least above the control's")


def _scored(c: Candidate, base: Candidate, control_loss: float | None, limit: float
            ) -> Candidate:
    """``c`` with its changes vs the base (step 0), vs the control, and the limit's verdict."""
    general = (c.general_loss / base.general_loss - 1.0
               if c.general_loss is not None and base.general_loss else None)
    versus = (c.general_loss / control_loss - 1.0
              if c.general_loss is not None and control_loss else None)
    gated = versus if control_loss else general
    return c.model_copy(update={"domain_change": c.eval_loss / base.eval_loss - 1.0,
                                "general_change": general, "general_change_vs_control": versus,
                                "within_limit": gated is None or gated <= limit})


def choose(candidates: list[Candidate], max_general_degradation: float,
           reference: Reference | None = None) -> Selection:
    """Apply the rule to the trained eval points (step > 0); step 0 is the base. With a
    ``control`` reference the general limit is measured from the control's general dev loss
    (``SELECTION_RULE_CONTROL``), else from the base's (``SELECTION_RULE``); the domain change
    is the base's in both."""
    base = next(c for c in candidates if c.step == 0)
    vs_control = reference is not None and reference.kind == "control"
    control_loss = reference.general_loss if vs_control and reference else None
    scored = [_scored(c, base, control_loss, max_general_degradation) for c in candidates]
    trained = [c for c in scored if c.step > 0]
    if not trained:
        raise ValueError("checkpoint choice: no trained eval point to choose from")
    ok = [c for c in trained if c.within_limit]

    def rise(c: Candidate) -> float:
        return (c.general_change_vs_control if vs_control else c.general_change) or 0.0

    chosen = (min(ok, key=lambda c: (c.eval_loss, -c.step)) if ok else
              min(trained, key=lambda c: (rise(c), -c.step)))
    return Selection(rule=SELECTION_RULE_CONTROL if vs_control else SELECTION_RULE,
                     max_general_degradation=max_general_degradation, candidates=scored,
                     chosen_step=chosen.step, within_limit=bool(ok),
                     reference="control" if vs_control else "base",
                     control_key=reference.control_key if reference else None,
                     control_general_loss=control_loss,
                     reference_note=reference.note if reference else None)
