from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.engine.artifacts import MANIFEST, ArtifactStore, Manifest, artifact_key, stable_hash


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


def test_failed_build_keeps_partial_outputs_aside(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)

    def fail(out: Path) -> Manifest:
        (out / "train.log").write_text("loss nan at step 3")
        raise FloatingPointError("non-finite loss")

    with pytest.raises(FloatingPointError) as err:
        store.build(stage="s", key="k", config_hash="c", code="v", inputs={}, fn=fail)
    [kept] = list((tmp_path / "s").glob(".failed-k-*"))
    assert (kept / "train.log").read_text() == "loss nan at step 3"
    assert err.value.__notes__ == [f"partial outputs of the failed build: {kept}"]
    assert store.get("s", "k") is None


def test_two_processes_build_one_artifact_once(tmp_path: Path) -> None:
    script = f"""
import sys, time
import subprocess
import sys
from pathlib import Path
from pipeline.engine.artifacts import ArtifactStore, Manifest
def slow(out):
    with open({str(tmp_path / "calls")!r}, "a") as fh:
        fh.write("x")
    time.sleep(2)
    (out / "data.txt").write_text("done")
    return Manifest(stage="s")
art, hit = ArtifactStore(Path({str(tmp_path / "store")!r})).build(
    stage="s", key="k", config_hash="c", code="v", inputs={{}}, fn=slow)
print(hit, art.path)
"""
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = sorted(p.communicate(timeout=60)[0].split() for p in procs)
    assert [o[0] for o in outs] == ["False", "True"]  # one built, the other waited and reused
    assert outs[0][1] == outs[1][1] and (tmp_path / "calls").read_text() == "x"
    assert (tmp_path / "store/s/k/data.txt").read_text() == "done"


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


def test_leftovers_are_failed_and_interrupted_builds_but_not_a_running_one(tmp_path: Path
                                                                          ) -> None:
    store = ArtifactStore(tmp_path)

    def fail(out: Path) -> Manifest:
        raise FloatingPointError("non-finite loss")

    with pytest.raises(FloatingPointError):
        store.build(stage="s", key="k1", config_hash="c", code="v", inputs={}, fn=fail)
    (tmp_path / "s/.tmp-k2-0123abcd").mkdir()  # a build killed before it could clean up
    seen = []

    def look(out: Path) -> Manifest:  # while k3 builds, its own .tmp- is not a leftover
        seen.extend((g.key, g.reason) for g in store.leftovers())
        return Manifest(stage="s")

    store.build(stage="s", key="k3", config_hash="c", code="v", inputs={}, fn=look)
    assert sorted(seen) == [("k1", "failed build"), ("k2", "interrupted build")]
    assert not store.building("s", "k3") and store.get("s", "k3") is not None


def test_a_stage_returning_another_stages_manifest_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="returned a 'other' manifest"):
        ArtifactStore(tmp_path).build(stage="s", key="k", config_hash="c", code="v", inputs={},
                                      fn=lambda out: Manifest(stage="other"))
