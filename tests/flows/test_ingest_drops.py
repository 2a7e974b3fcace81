"""Drops through the flow (shards as Prefect tasks) and what `dapt runs` shows of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.domain_flow import domain_pipeline
from pipeline.engine.catalog import Catalog
from tests.e2e_domain import write_test_domain

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # the ingest flow under Prefect


def _stage_line(output: str, run_id: str) -> str:
    lines = output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(run_id))
    return next(line for line in lines[at + 1:] if line.strip().startswith("ingest"))


def test_drops_through_the_flow_show_their_reuse_in_dapt_runs(
        harness, samples_dir: Path, tmp_path: Path) -> None:
    path = write_test_domain(samples_dir, tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["ingest"]["sources"] = [{"name": "hpo", "path": "data/drops/*.jsonl", "id_field": "id"}]
    doc["ingest"].update(min_kept_docs=50)
    doc["pretrain"] = {}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    drops = tmp_path / "data/drops"
    drops.mkdir()
    lines = (samples_dir / "medical/hpo.jsonl").read_text().splitlines(keepends=True)
    work = tmp_path / "work"

    def run() -> dict:
        domain_pipeline(only="ingest", workdir=str(work), domain_file=str(path))
        latest = Catalog(work / "catalog.duckdb").runs(limit=1)[0]
        assert latest["status"] == "completed", latest
        [stage] = Catalog(work / "catalog.duckdb").stage_runs(latest["run_id"])
        assert stage["status"] == "completed", stage
        return {"run_id": latest["run_id"], **json.loads(stage["metrics"])}

    (drops / "d1.jsonl").write_text("".join(lines[:600]))
    first = run()
    (drops / "d2.jsonl").write_text("".join(lines[600:1200]))
    second = run()
    again = run()  # --only ingest: the artifact again, from the shard work already done
    assert (first["drop"], first["shards_built"]) == (1, 1)
    assert (second["drop"], second["files_reused"], second["shards_built"]) == (2, 1, 1)
    assert (again["drop"], again["shards_cached"], again["shards_built"]) == (2, 1, 0)

    shown = CliRunner().invoke(app, ["runs", "--workdir", str(work)])
    assert shown.exit_code == 0, shown.output
    assert "drop=2, files_reused=1, shards_built=1, shards_cached=0" in _stage_line(
        shown.output, second["run_id"])
    assert "drop=2, files_reused=1, shards_built=0, shards_cached=1" in _stage_line(
        shown.output, again["run_id"])
