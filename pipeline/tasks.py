"""Labelled task files: reading them (fields, label map) and their fixed train/validation/test
split. Shared by the finetune stage and by ingest's decontamination, without torch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import EvalSetConfig, TaskConfig
from pipeline.files import read_columns


def load_task(task: TaskConfig, path: Path) -> tuple[pa.Table, int]:
    """Rows (id, text, label) of a task file with ``label_map`` applied, and the number of rows
    left out because their label is not in the map. Rows missing text or label are an error."""
    table = read_columns(path, {"id_field": task.id_field, "text_field": task.text_field,
                                "label_field": task.label_field}, f"finetune.tasks.{task.name}")
    bad = table.num_rows - table.drop_null().num_rows
    if bad:
        raise ValueError(f"finetune.tasks.{task.name}: {bad} rows of {path} have no id, text "
                         "or label")
    if not task.label_map:
        return table, 0
    keys = pa.array(list(task.label_map), pa.string())
    index = pc.index_in(table.column("label"), value_set=keys)
    kept = table.filter(pc.is_valid(index))
    names = pa.array(list(task.label_map.values()), pa.string())
    mapped = names.take(pc.drop_null(index))
    if not kept.num_rows:
        raise ValueError(f"finetune.tasks.{task.name}.label_map: no label of {path} is a key "
                         f"of the map {sorted(task.label_map)}")
    return kept.set_column(2, "label", mapped), table.num_rows - kept.num_rows


def split_of(example_id: str, test_fraction: float, validation_fraction: float,
             seed: int) -> str:
    """``train``, ``validation`` or ``test``: a fixed function of the id and the split seed."""
    digest = hashlib.md5(f"{seed}:{example_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    return "validation" if u < test_fraction + (1 - test_fraction) * validation_fraction \
        else "train"


def eval_set_texts(eval_set: EvalSetConfig) -> list[str]:
    """The texts of an evaluation set: the rows of its file in the test split."""
    table = read_columns(Path(eval_set.path), {"id_field": eval_set.id_field,
                                               "text_field": eval_set.text_field},
                         f"ingest.decontamination.test_sets.{eval_set.name}")
    test = [(i, text) for i, text in zip(table.column("id").to_pylist(),
                                         table.column("text").to_pylist(), strict=True)
            if text and (eval_set.test_fraction >= 1.0 or split_of(
                str(i), eval_set.test_fraction, 0.0, eval_set.split_seed) == "test")]
    # the same order and cap as prepare_task's, so these are exactly the rows scored
    test.sort(key=lambda r: hashlib.md5(f"{eval_set.split_seed}:{r[0]}".encode()).digest())
    return [text for _, text in test[:eval_set.max_rows]]
