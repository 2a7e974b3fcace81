"""The reference of the checkpoint rule: what an eval point's general dev loss is measured from.

With ``select_checkpoint`` the worker keeps the eval point with the lowest domain dev loss among
those whose general dev loss stays within ``select_max_general_degradation`` of a reference
(``worker_io.choose``). Where the run has a control step (the base model continued on general
text only, with the same recipe: ``pipeline/stages/control/``) the reference is **the control
model's general dev loss on this run's own general dev sequences**: the same tokens, scored by
the worker's loss (``dev_scores.dev_losses``: the mean of the micro-batches' token losses
weighted by their sizes, at the run's precision), so ``general_change_vs_control`` = the point's
loss / the control's - 1 measures the forgetting the domain data causes, not what any continued
training does. The domain change stays relative to the base (step 0).

The control reads the base tokenizer only. A run whose tokens are not the base's (an extended
vocabulary, a promoted model with its own tokenizer) or that has no general dev text cannot be
compared: the reference is then the base (step 0), as without a control, and the selection
record says why (``not_comparable``: the sweep's control proxies ask the same rule). The
control's score is kept in the build directory (``reference.json``), so a resumed build does
not score it again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pipeline.config import PretrainConfig
from pipeline.files import write_atomic
from pipeline.stages.pretrain import dev_scores
from pipeline.stages.pretrain.output import PretrainOutput
from pipeline.stages.pretrain.worker_io import Reference

log = logging.getLogger("dapt")
FILE = "reference.json"


# Why the control cannot score the tokens, as each user of the rule reports it: a run's checkpoint
# rule (then measured from the base) and a sweep's pick (``pipeline/lifecycle/sweep_control.py``).
NOTES: dict[str, dict[str, str]] = {
    "run": {
        "tokenizer": ("this run trains with the {tokenizer} tokenizer, not the base model's, so "
                      "the control (base tokenizer) cannot score its dev tokens; the general "
                      "limit is measured from the base model (step 0)"),
        "general": ("this run has no general dev text (shorter than one sequence), so there is "
                    "no forgetting to compare with the control's; the rule is the lowest domain "
                    "loss"),
    },
    "sweep": {
        "tokenizer": ("the grid points trained with the {tokenizer} tokenizer, not the base "
                      "model's, so the control (base tokenizer) cannot score their dev tokens; "
                      "the pick is gated on the change against the base model instead"),
        "general": ("the grid points scored no general dev text (shorter than one sequence), so "
                    "there is no forgetting to compare with the control's"),
    },
}


def not_comparable(tokenizer: str, general_eval: bool,
                   of: Literal["run", "sweep"] = "run") -> str | None:
    """Why the control (base tokenizer) cannot score the general dev tokens of a build trained
    with ``tokenizer`` (its label: ``base``, ``extended``, ...) that has general dev text or not
    (``general_eval``, as ``WorkerSpec.general_eval``); None: it can. The one rule for both the
    checkpoint rule's reference and the sweep's control proxies; ``of`` picks the wording."""
    if tokenizer != "base":
        return NOTES[of]["tokenizer"].format(tokenizer=tokenizer)
    if not general_eval:
        return NOTES[of]["general"]
    return None


def reference(config: PretrainConfig, control: PretrainOutput | None, tokenizer: str,
              packed: dict[str, Any], out_dir: Path, bf16: bool) -> Reference | None:
    """The checkpoint rule's reference for this build: None without a control (or without
    ``select_checkpoint``), else the control's general dev loss on ``out_dir``'s packed general
    dev sequences, or the base with the reason it could not be the control."""
    if control is None or not config.select_checkpoint:
        return None
    cached = out_dir / FILE
    if cached.exists():  # a resumed build: scored before
        return Reference.model_validate_json(cached.read_text())
    note = not_comparable(tokenizer, packed.get("eval_general", {}).get("sequences", 0) > 0)
    if note:
        log.warning("pretrain: checkpoint choice vs the base, not the control: %s", note)
        found = Reference(kind="base", control_key=control.key, note=note)
    else:
        seqs = dev_scores.packed_dev_sequences(out_dir / "data", config.eval_max_seqs,
                                               ("general",))
        loss = dev_scores.dev_losses(control.hf_dir, seqs, config.micro_batch_size,
                                     bf16)["general"]
        _release_accelerator()
        found = Reference(kind="control", control_key=control.key, general_loss=loss,
                          sequences=len(seqs["general"]))
        log.info("pretrain: checkpoint choice vs control/%s: its general dev loss %.4f on "
                 "the run's %d general dev sequences", control.key, loss, found.sequences)
    write_atomic(cached, json.dumps(found.model_dump(), indent=2))
    return found


def _release_accelerator() -> None:
    """Give the control's GPU memory back before the worker starts (a no-op on a CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
