from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pipeline.engine.artifacts import ArtifactStore, Manifest
from pipeline.engine.catalog import Catalog


def test_records_runs_stages_lineage_metrics(tmp_path: Path) -> None:
    store, catalog = ArtifactStore(tmp_path / "a"), Catalog(tmp_path / "c.duckdb")
    up, _ = store.build(stage="ingest", key="k1", config_hash="c", code="v", inputs={},
                        fn=lambda out: Manifest(stage="ingest", counts={"docs": 3}))
    down, _ = store.build(stage="tokenizer", key="k2", config_hash="c", code="v",
                          inputs={"ingest": up},
                          fn=lambda out: Manifest(stage="tokenizer", metrics={"fertility": 1.5}))
    catalog.start_run("r1", "toy", "tiny", {"force": False})
    for art, hit in ((up, True), (down, False)):
        catalog.record_stage("r1", "toy", art, cache_hit=hit, started_at=datetime.now(),
                             duration_s=0.5)
    catalog.finish_run("r1", "completed", report_path="/x/report.md")

    [run] = catalog.runs("toy")
    assert run["status"] == "completed" and run["report_path"] == "/x/report.md"
    stages = catalog.stage_runs("r1")
    assert [(s["stage"], s["artifact_key"], s["cache_hit"]) for s in stages] == [
        ("ingest", "k1", True), ("tokenizer", "k2", False)]
    assert catalog.query("SELECT input_stage, input_key FROM lineage WHERE key = 'k2'") == [
        {"input_stage": "ingest", "input_key": "k1"}]
    assert catalog.query("SELECT name, value FROM metrics") == [
        {"name": "fertility", "value": 1.5}]
    assert catalog.runs("other") == []


def test_a_cache_hit_keeps_the_stored_curve_and_held_shares_one_connection(
        tmp_path: Path) -> None:
    store, catalog = ArtifactStore(tmp_path / "a"), Catalog(tmp_path / "c.duckdb")

    def build(out: Path) -> Manifest:
        (out / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n')
        return Manifest(stage="pretrain", metrics={"eval_loss": 2.5})

    art, _ = store.build(stage="pretrain", key="k", config_hash="c", code="v", inputs={},
                         fn=build)
    for run_id, hit in (("r1", False), ("r2", True), ("r3", True)):
        catalog.start_run(run_id, "toy", "tiny", {})
        catalog.record_stage(run_id, "toy", art, cache_hit=hit, started_at=datetime.now(),
                             duration_s=0.1)
    assert catalog.query("SELECT step, value FROM curves ORDER BY step") == [
        {"step": 1, "value": 3.0}, {"step": 2, "value": 2.5}]
    with catalog.held():
        with catalog.connect() as a, catalog.connect() as b:
            assert a is b
        assert len(catalog.stage_runs("r2")) == 1
    with catalog.connect() as c:  # released: a fresh connection again
        assert c is not a


def test_a_running_run_whose_process_is_gone_reads_crashed(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    catalog = Catalog(tmp_path / "c.duckdb")
    host = socket.gethostname()
    catalog.start_run("dead", "toy", "tiny", {}, pid=gone.pid, host=host)
    catalog.start_run("alive", "toy", "tiny", {}, pid=os.getpid(), host=host)
    catalog.start_run("elsewhere", "toy", "tiny", {}, pid=gone.pid, host=host + "-other")
    catalog.start_run("done", "toy", "tiny", {}, pid=gone.pid, host=host)
    catalog.finish_run("done", "completed")
    status = {r["run_id"]: r["status"] for r in catalog.runs()}
    # another host's process cannot be seen from here: taken at its word
    assert status == {"dead": "crashed", "alive": "running", "elsewhere": "running",
                      "done": "completed"}
