"""Reading an evaluate artifact (or the failed build its gates left): what promotion, the run
report and the driver may use.

They go through ``EvaluateOutput`` and never open an evaluation's files by name. This module
is not imported by the evaluate stage: editing it changes no step's key.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.engine.artifacts import MANIFEST, Artifact, Manifest


class EvaluateOutput:
    """An evaluation as its readers see it. ``source``: the artifact, or a directory evaluate
    wrote into (a failed build keeps ``metrics.json`` and the report: the gates raise last).

    - ``evaluation``: ``metrics.json`` as written ({metrics, per_source, base_per_source,
      control_per_source, verdict, selection}), what the report is drawn from;
    - ``metrics``, ``verdict`` ({text, gates}), ``gates`` and ``failed_gates`` (each {gate,
      limit, value, passed});
    - ``report_file`` (``report.md``; ``report.html`` beside it) and ``plots`` (PNG bytes by
      file name, as the report embeds them);
    - ``inputs``: {input name: artifact key} of what it evaluated (an artifact only);
    - ``eval_docs``: how many held-out test documents were scored (an artifact only).
    """

    def __init__(self, source: Artifact | Path):
        self.artifact = source if isinstance(source, Artifact) else None
        self.path: Path = source.path if isinstance(source, Artifact) else Path(source)

    @property
    def exists(self) -> bool:
        return (self.path / "metrics.json").exists()

    @cached_property
    def evaluation(self) -> dict[str, Any]:
        return json.loads((self.path / "metrics.json").read_text())

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def metrics(self) -> dict[str, float]:
        return self.evaluation["metrics"]

    @property
    def verdict(self) -> dict[str, Any]:
        return self.evaluation.get("verdict") or {}

    @property
    def gates(self) -> list[dict[str, Any]]:
        return list(self.verdict.get("gates", []))

    @property
    def failed_gates(self) -> list[dict[str, Any]]:
        return [g for g in self.gates if not g["passed"]]

    @property
    def report_file(self) -> Path:
        return self.path / "report.md"

    @property
    def plots(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted((self.path / "plots").glob("*.png"))}

    @cached_property
    def _manifest(self) -> Manifest:
        if self.artifact is None:
            raise ValueError(f"{self.path}: not a published evaluate artifact (no manifest)")
        return Manifest.read(self.path / MANIFEST)

    @property
    def inputs(self) -> dict[str, str]:
        return dict(self._manifest.inputs)

    @property
    def eval_docs(self) -> int:
        return int(self._manifest.counts["eval_docs"])
