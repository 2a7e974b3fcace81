"""Reading a pretrain (or control) artifact: the files and fields the steps downstream may use.

Evaluate, finetune, the report, the sweep and promotion go through ``PretrainOutput`` and never
open a pretrain artifact's files by name, read its manifest's dicts, or import the training
worker's IPC module (``worker_io``) themselves. Pretrain reads the promoted model it continues
through it too, so editing this module changes pretrain's key as well as its readers'.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.engine.artifacts import MANIFEST, Artifact, Manifest
from pipeline.stages.pretrain.worker_io import Selection, WorkerSpec, WorkerSummary


class PretrainOutput:
    """A pretrain artifact (or the control's, which has the same files) as its readers see it.

    Files: ``hf_dir`` (the exported model), ``spec`` (what the worker trained: ``seq_len``),
    ``summary`` (the worker's summary, with the checkpoint ``selection``), ``curve()`` (the
    per-step records). Manifest: ``mode``, ``base_model`` (continue mode), ``tokenizer`` (which
    one training used: domain, base or extended), ``precision``, ``mixture`` ({source: target
    and achieved share, tokens, passes}), ``params``, ``steps``, ``tokens_trained``,
    ``world_size``, ``tokens_per_s``, ``eval_loss``, ``general_eval_loss`` (None without
    general text). ``source``: an artifact, or the artifact's directory.
    """

    def __init__(self, source: Artifact | Path):
        self.path: Path = source if isinstance(source, Path) else Path(source.path)

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def hf_dir(self) -> Path:
        return self.path / "hf"

    @property
    def spec(self) -> WorkerSpec:
        return WorkerSpec.model_validate_json((self.path / "spec.json").read_text())

    @property
    def seq_len(self) -> int:
        return self.spec.config.seq_len

    @property
    def summary(self) -> WorkerSummary:
        return WorkerSummary.model_validate_json((self.path / "summary.json").read_text())

    @property
    def selection(self) -> Selection | None:
        return self.summary.selection

    def curve(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    @cached_property
    def manifest(self) -> Manifest:
        return Manifest.read(self.path / MANIFEST)

    @property
    def mode(self) -> str | None:
        return self.manifest.extra.get("mode")

    @property
    def base_model(self) -> str | None:
        return self.manifest.extra.get("base_model")

    @property
    def tokenizer(self) -> str:
        return self.manifest.extra.get("tokenizer", "domain")

    @property
    def precision(self) -> str:
        return self.manifest.extra["precision"]

    @property
    def mixture(self) -> dict[str, dict[str, Any]]:
        return self.manifest.extra.get("mixture", {})

    @property
    def params(self) -> int:
        return int(self.manifest.counts["params"])

    @property
    def steps(self) -> int:
        return int(self.manifest.counts["steps"])

    @property
    def tokens_trained(self) -> int | None:
        return self.manifest.counts.get("tokens_trained")

    @property
    def world_size(self) -> int:
        return int(self.manifest.counts["world_size"])

    @property
    def tokens_per_s(self) -> float:
        return float(self.manifest.metrics["tokens_per_s"])

    @property
    def eval_loss(self) -> float:
        return float(self.manifest.metrics["eval_loss"])

    @property
    def general_eval_loss(self) -> float | None:
        return self.manifest.metrics.get("general_eval_loss")
