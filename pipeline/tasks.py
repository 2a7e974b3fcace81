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


def split_rows(ids: list[str], *, test_fraction: float, validation_fraction: float, seed: int,
               caps: dict[str, int | None]) -> dict[str, list[int]]:
    """Row indices of each split (``train``, ``validation``, ``test``), each in MD5 order of
    ``seed:id`` (deterministic, not file order) and cut to ``caps[split]`` (None or absent: no
    cap). Fine-tuning trains and scores on these rows, and ingest's decontamination removes the
    test rows' n-grams from the training corpus: both call this, so they cannot disagree."""
    splits: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for i, x in enumerate(ids):
        splits[split_of(x, test_fraction, validation_fraction, seed)].append(i)

    def key(i: int) -> bytes:
        return hashlib.md5(f"{seed}:{ids[i]}".encode()).digest()

    return {s: sorted(rows, key=key)[:caps.get(s)] for s, rows in splits.items()}


def eval_set_texts(eval_set: EvalSetConfig) -> list[str]:
    """The texts of an evaluation set: the rows of its file in the test split, the same rows
    (order and cap) that fine-tuning scores."""
    table = read_columns(Path(eval_set.path), {"id_field": eval_set.id_field,
                                               "text_field": eval_set.text_field},
                         f"ingest.decontamination.test_sets.{eval_set.name}")
    ids = [str(i) for i in table.column("id").to_pylist()]
    texts = table.column("text").to_pylist()
    test = split_rows(ids, test_fraction=eval_set.test_fraction, validation_fraction=0.0,
                      seed=eval_set.split_seed, caps={"test": eval_set.max_rows})["test"]
    return [texts[i] for i in test if texts[i]]
