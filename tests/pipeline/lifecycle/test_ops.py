from __future__ import annotations

import errno
from datetime import datetime
from pathlib import Path

import pytest

from pipeline import StageError
from pipeline.engine.artifacts import ArtifactStore, Manifest
from pipeline.engine.catalog import Catalog
from pipeline.engine.execute import is_transient
from pipeline.lifecycle import ops


def _build(store: ArtifactStore, stage: str, key: str, inputs: dict, **extra) -> object:
    art, _ = store.build(stage=stage, key=key, config_hash="c", code="v", inputs=inputs,
                         fn=lambda out: Manifest(stage=stage, **extra))
    return art


@pytest.fixture
def workdir(tmp_path: Path) -> tuple[ArtifactStore, Catalog]:
    store, catalog = ArtifactStore(tmp_path / "artifacts"), Catalog(tmp_path / "catalog.duckdb")
    ing = _build(store, "ingest", "aaa111", {}, extra={"files": {"hpo": ["/data/hpo.jsonl"]}})
    tok = _build(store, "tokenizer", "bbb222", {"ingest": ing})
    base = _build(store, "models", "fff666", {})  # a base model: never a stage run itself
    pre = _build(store, "pretrain", "ccc333", {"ingest": ing, "tokenizer": tok, "models": base},
                 metrics={"eval_loss": 5.0})
    _build(store, "pretrain", "ddd444", {"ingest": ing, "tokenizer": tok})  # an older config
    for run_id, arts in (("r1", [ing, tok, pre]),):
        catalog.start_run(run_id, "toy", "tiny", {})
        for art in arts:
            catalog.record_stage(run_id, "toy", art, cache_hit=False, started_at=datetime.now(),
                                 duration_s=1.0)
        catalog.finish_run(run_id, "completed")
    return store, catalog


def test_lineage_goes_down_to_files_and_up_to_dependents(workdir) -> None:
    store, _ = workdir
    lines = ops.lineage(store, "bbb")
    assert lines[0].startswith("tokenizer/bbb222")
    text = "\n".join(lines)
    assert "<- ingest/aaa111" in text and "<- source hpo: /data/hpo.jsonl" in text
    assert "-> pretrain/ccc333" in text and "eval_loss=5" in text
    with pytest.raises(ValueError, match="0 artifacts match 'zzz'"):
        ops.lineage(store, "zzz")


def test_gc_finds_unreferenced_and_failed_then_deletes(workdir) -> None:
    store, catalog = workdir
    failed = store.root / "pretrain/.failed-eee555-1234"
    failed.mkdir()
    garbage = ops.find_garbage(store, catalog)
    assert {(g.path.name, g.reason) for g in garbage} == {
        ("ddd444", "unreferenced"), (".failed-eee555-1234", "failed build")}
    assert store.get("pretrain", "ddd444") is not None  # finding is a dry run
    ops.collect_garbage(garbage, catalog)
    assert store.get("pretrain", "ddd444") is None and not failed.exists()
    assert store.get("pretrain", "ccc333") is not None
    assert store.get("models", "fff666") is not None  # kept: an input of a kept artifact
    assert ops.find_garbage(store, catalog) == []


def test_only_io_that_may_succeed_later_is_transient() -> None:
    assert is_transient(OSError(errno.EIO, "I/O error"))
    assert is_transient(TimeoutError())
    wrapped = StageError("stage ingest failed")
    wrapped.__cause__ = ConnectionResetError()
    assert is_transient(wrapped)
    for exc in (ValueError("bad config"), FloatingPointError("nan"), MemoryError(),
                FileNotFoundError(errno.ENOENT, "missing"), RuntimeError("exit code 1")):
        assert not is_transient(exc)
