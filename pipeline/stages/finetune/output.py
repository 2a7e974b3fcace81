"""Reading a finetune artifact: the fields the steps downstream (evaluate, the report) may use.

Downstream code goes through ``FinetuneOutput`` and never reads a finetune manifest's dicts or
opens its files by name. This module is not imported by the finetune stage: editing it changes
the keys of the steps that read fine-tune results, not finetune's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.engine.artifacts import Artifact


class FinetuneOutput:
    """A finetune artifact as its readers see it.

    - ``metrics``: the headline figures of the first task (accuracy, macro_f1 and their _std,
      the base's and the control's, the gains), as evaluate republishes them;
    - ``method`` (``fine_tune`` or ``probe``), ``seeds``, ``models`` (adapted, base, control:
      those fine-tuned);
    - ``tasks``: (task, result) in the domain file's order (the first is the headline); a result
      has ``labels``, ``counts``, ``task_file`` and per model {accuracy, macro_f1, their _std,
      per_class_f1, support, confusion, runs};
    - ``predictions_file``: every test prediction (task, model, seed, row, label, predicted);
    - ``test_split(task)``: the task's test rows (id, text, label name) in the order scored;
    - ``validation_split(task)``: its validation rows (the same columns, hash order; never test
      rows), or None for an artifact built before finetune kept them.
    """

    def __init__(self, artifact: Artifact):
        if artifact.stage != "finetune":
            raise ValueError(f"{artifact.stage}/{artifact.key} is not a finetune artifact")
        manifest = artifact.manifest
        self.artifact = artifact
        self.metrics: dict[str, float] = dict(manifest.metrics)
        self.counts: dict[str, int] = dict(manifest.counts)
        extra = manifest.extra
        self.method: str = extra["method"]
        self.seeds: list[int] = list(extra["seeds"])
        self.models: list[str] = list(extra["models"])
        self.tasks: list[tuple[str, dict[str, Any]]] = [
            (name, extra["tasks"][name]) for name in extra["task_names"]]

    @property
    def task_files(self) -> dict[str, str]:
        """{task: its labelled file}."""
        return {name: result["task_file"] for name, result in self.tasks}

    @property
    def predictions_file(self) -> Path:
        return self.artifact.path / "predictions.parquet"

    def test_split(self, task: str) -> pa.Table:
        """The test rows of ``task`` (id, text, label), exactly those fine-tuning scored."""
        path = self.artifact.path / "test_split.parquet"
        if not path.exists():
            raise ValueError(f"finetune/{self.artifact.key} has no test_split.parquet (built "
                             "by an older dapt): rebuild it with `dapt run DOMAIN --from "
                             "finetune`")
        table = pq.read_table(path)
        rows = table.filter(pc.equal(table.column("task"), task)).drop(["task"])
        if not rows.num_rows:
            raise ValueError(f"finetune/{self.artifact.key}: no test rows of task {task!r}")
        return rows

    def validation_split(self, task: str) -> pa.Table | None:
        """The validation rows of ``task`` (id, text, label; maybe none); None when the artifact
        predates ``validation_split.parquet``."""
        path = self.artifact.path / "validation_split.parquet"
        if not path.exists():
            return None
        table = pq.read_table(path)
        return table.filter(pc.equal(table.column("task"), task)).drop(["task"])
