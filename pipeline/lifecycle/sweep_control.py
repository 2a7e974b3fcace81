"""The sweep's control proxies: the control step (the base model continued on general text only,
``pipeline/stages/control/``) with a grid point's proxy budget and learning rate, one per
learning rate, so that each point's forgetting is measured against what the same training
does without the domain, as the verdict measures it (docs/adaptation.md, "The control run").

A control proxy is the control step's own code and recipe through a ``Session`` (``drive(upto=
"control")``): an ordinary cached control artifact, and a run in the catalog. Its recipe
ignores the replay share (``control.stage.UNVERSIONED``), so every point of one learning rate
shares it. It keeps its final weights (``select_checkpoint`` off): a point's figures are its
final step's.

The control step scores its own dev text (the ``general`` artifact's dev passages), which is
not the text a point's ``general_loss`` is measured on (the domain's held-out general dev
documents, packed whole). So the sweep scores the control proxy's model on the point's own dev
sequences (``pipeline/stages/pretrain/dev_scores.py``: the same tokens, the worker's loss),
general and domain: ``general_change_vs_control`` = the point's general dev loss / the
control's on the same sequences - 1 (= the change of bits/byte), likewise for the domain. That
needs the point's tokens to be the control's: a point trained with an extended (or its own)
tokenizer cannot be compared this way (the checkpoint rule's own test,
``pipeline/stages/pretrain/reference.py: not_comparable``), and the sweep says so and gates on
the base instead.
Scores are kept under ``<workdir>/sweeps/control-scores/``, keyed by the control artifact and
the scored tokens, so a rerun scores nothing again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig, deep_merge
from pipeline.domains import Domain
from pipeline.driver import Session
from pipeline.files import write_atomic
from pipeline.stages.pretrain import dev_scores, reference
from pipeline.stages.pretrain.output import PretrainOutput

log = logging.getLogger("dapt")
SCORES = "control-scores"


def control_config(proxy: RunConfig) -> RunConfig:
    """A grid point's proxy run with the control on, keeping its final weights."""
    override = {"pretrain": {"control": True, "select_checkpoint": False}}
    return RunConfig.model_validate(deep_merge(proxy.model_dump(mode="json"), override))


def train_control(domain: Domain, proxy: RunConfig, workdir: Path, sweep_id: str,
                  lr: float) -> dict[str, Any]:
    """The control proxy of learning rate ``lr`` (or its cached artifact)."""
    session = Session(domain, control_config(proxy), workdir,
                      {"sweep": sweep_id, "lr": lr, "control": True})
    t0 = time.perf_counter()
    session.drive(upto="control")  # the control and its missing inputs, nothing else
    result = session.executor.results["control"]
    return {"lr": lr, "run_id": session.run_id, "key": result["key"],
            "cached": result["cache_hit"], "seconds": time.perf_counter() - t0,
            "path": str(result["path"])}


def _digest(control_key: str, precision: str, micro: int, seqs: dict[str, Any]) -> str:
    h = hashlib.sha256(f"{control_key}|{precision}|{micro}".encode())
    for name in sorted(seqs):
        h.update(name.encode() + seqs[name].tobytes())
    return h.hexdigest()[:24]


def control_losses(control: dict[str, Any], point_path: Path, workdir: Path
                   ) -> dict[str, Any]:
    """The control proxy's mean token loss on the point's dev sequences, by slice, from the
    cache when these tokens were scored with this control before."""
    point, ctrl = PretrainOutput(point_path), PretrainOutput(Path(control["path"]))
    seqs = dev_scores.dev_sequences(point)
    micro = point.spec.config.micro_batch_size
    cache = workdir / "sweeps" / SCORES / (
        _digest(control["key"], ctrl.precision, micro, seqs) + ".json")
    if cache.exists():
        return {**json.loads(cache.read_text()), "cached": True}
    t0 = time.perf_counter()
    losses = dev_scores.dev_losses(ctrl.hf_dir, seqs, micro, ctrl.precision == "bf16")
    found = {"losses": losses, "control": control["key"], "scored_on": point.key,
             "sequences": {k: len(v) for k, v in seqs.items()},
             "seconds": time.perf_counter() - t0}
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, json.dumps(found, indent=2))
    return {**found, "cached": False}


def changes(point: dict[str, Any], scored: dict[str, Any]) -> dict[str, float]:
    """A point's dev-loss changes against its control proxy (same sequences, same tokens)."""
    losses = scored["losses"]
    out = {"control_general_dev_loss": losses["general"],
           "general_change_vs_control": point["general_dev_loss"] / losses["general"] - 1}
    if "domain" in losses:
        out.update({"control_domain_dev_loss": losses["domain"],
                    "domain_change_vs_control": point["domain_dev_loss"] / losses["domain"] - 1})
    return out


class Controls:
    """The control proxies of one sweep: trained (or found) once per learning rate, and each
    point compared with its learning rate's."""

    def __init__(self, domain: Domain, workdir: Path, sweep_id: str):
        self.domain, self.workdir, self.sweep_id = domain, workdir, sweep_id
        self.by_lr: dict[float, dict[str, Any]] = {}
        self.note: str | None = None  # why the points could not be compared (then: the base)

    def compare(self, point: dict[str, Any], proxy: RunConfig) -> None:
        """Add the point's vs-control changes (``proxy``: the point's run config)."""
        if self.note is None:
            built = PretrainOutput(Path(point["path"]))
            self.note = reference.not_comparable(built.tokenizer, built.spec.general_eval,
                                                 of="sweep")
            if self.note:
                log.warning("sweep: no comparison with the control: %s", self.note)
        if self.note:
            return
        lr = point["lr"]
        if lr not in self.by_lr:
            self.by_lr[lr] = train_control(self.domain, proxy, self.workdir, self.sweep_id, lr)
        control = self.by_lr[lr]
        scored = control_losses(control, Path(point["path"]), self.workdir)
        control.setdefault("scored_on", scored["scored_on"])
        control["scores_cached"] = scored["cached"]
        control["general_dev_loss"] = scored["losses"]["general"]
        control["domain_dev_loss"] = scored["losses"].get("domain")
        point.update(changes(point, scored))
