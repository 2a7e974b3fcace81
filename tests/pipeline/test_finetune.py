from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import TaskConfig
from pipeline.finetune import is_test, load_task


def test_split_is_a_stable_function_of_id() -> None:
    ids = [f"doc-{i}" for i in range(2000)]
    test = [i for i in ids if is_test(i, 0.2, seed=0)]
    assert 320 < len(test) < 480
    assert test == [i for i in ids if is_test(i, 0.2, seed=0)]
    assert test != [i for i in ids if is_test(i, 0.2, seed=1)]


def test_load_task_reads_fields_and_rejects_missing(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"key": 1, "body": "alpha", "y": "A"}, {"key": 2, "body": "beta", "y": "B"}]))
    task = TaskConfig(name="t", path=str(path), id_field="key", text_field="body", label_field="y")
    assert load_task(task, path).to_pylist() == [
        {"id": "1", "text": "alpha", "label": "A"}, {"id": "2", "text": "beta", "label": "B"}]
    with pytest.raises(ValueError, match="label_field='label'"):
        load_task(TaskConfig(name="t", path=str(path), id_field="key", text_field="body"), path)
