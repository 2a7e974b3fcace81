"""The task split shared by fine-tuning and ingest's decontamination."""

from __future__ import annotations

import hashlib

from pipeline.tasks import split_of, split_rows


def test_split_rows_are_md5_ordered_capped_and_agree_with_split_of() -> None:
    ids = [f"doc-{i}" for i in range(500)]
    rows = split_rows(ids, test_fraction=0.2, validation_fraction=0.1, seed=7,
                      caps={"train": 50, "test": 30})
    assert len(rows["train"]) == 50 and len(rows["test"]) == 30
    assert len(rows["validation"]) == sum(split_of(x, 0.2, 0.1, 7) == "validation" for x in ids)
    for split, chosen in rows.items():
        assert all(split_of(ids[i], 0.2, 0.1, 7) == split for i in chosen)
        keys = [hashlib.md5(f"7:{ids[i]}".encode()).digest() for i in chosen]
        assert keys == sorted(keys)
    # a cap takes a prefix: the first 10 test rows are the first 10 of the 30
    assert split_rows(ids, test_fraction=0.2, validation_fraction=0.1, seed=7,
                      caps={"test": 10})["test"] == rows["test"][:10]
