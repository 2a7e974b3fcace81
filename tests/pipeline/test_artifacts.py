from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.artifacts import MANIFEST, ArtifactStore, Manifest, artifact_key, stable_hash


def test_key_is_order_independent_and_input_sensitive() -> None:
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    k = artifact_key({"lr": 1}, "code1", {"ingest": "abc"})
    assert k == artifact_key({"lr": 1}, "code1", {"ingest": "abc"})
    assert k != artifact_key({"lr": 2}, "code1", {"ingest": "abc"})
    assert k != artifact_key({"lr": 1}, "code2", {"ingest": "abc"})
    assert k != artifact_key({"lr": 1}, "code1", {"ingest": "abd"})


def _writer(calls: list[int]):
    def fn(out: Path) -> Manifest:
        calls.append(1)
        (out / "data.txt").write_text("x")
        return Manifest(stage="s", counts={"n": 1})
    return fn


def test_build_publishes_once_then_hits(tmp_path: Path) -> None:
    store, calls = ArtifactStore(tmp_path), []
    art, hit = store.build(stage="s", key="k", config_hash="c", code="v", inputs={},
                           fn=_writer(calls))
    assert not hit and art.path == tmp_path / "s/k"
    m = art.manifest
    assert m.key == "k" and m.files == ["data.txt"] and m.counts == {"n": 1}
    again, hit = store.build(stage="s", key="k", config_hash="c", code="v", inputs={},
                             fn=_writer(calls))
    assert hit and again.path == art.path and len(calls) == 1
    _, hit = store.build(stage="s", key="k", config_hash="c", code="v", inputs={},
                         fn=_writer(calls), force=True)
    assert not hit and len(calls) == 2 and store.get("s", "k") is not None


def test_crash_leaves_nothing_that_looks_done(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)

    def crash(out: Path) -> Manifest:
        (out / "half.bin").write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.build(stage="s", key="k", config_hash="c", code="v", inputs={}, fn=crash)
    assert store.get("s", "k") is None
    assert not list((tmp_path / "s").glob("*/" + MANIFEST))
    assert [p.name for p in (tmp_path / "s").iterdir() if not p.name.endswith(".lock")] == []
