"""Ingest's shards as Prefect tasks: run alone, on a thread pool and on a local Dask cluster
(separate worker processes), the ingest artifact holds the same bytes, with files cut into
pieces as big files are."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.shards import shards_flow, task_runner
from pipeline.driver import Session
from tests.e2e_domain import GENERAL_LINES, SLICE_LINES, write_test_domain


def _shard_task_runs(state) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    return sorted(f"{r.name}:{r.state.name}" for r in runs)


def _ingest(samples_dir: Path, root: Path, runner: str | None) -> tuple[dict, dict[str, bytes]]:
    domain = write_test_domain(samples_dir, root)
    doc = yaml.safe_load(domain.read_text())
    doc["ingest"]["shard_mb"] = 0.3  # files of 0.2-0.9 MB: three are cut into pieces
    domain.write_text(yaml.safe_dump(doc, sort_keys=False))
    session = Session.open(None, "tiny", workdir=root / "work", domain_file=domain)
    if runner is None:
        session.run_stage("ingest")  # no Prefect: the shards run one by one
    else:
        state = shards_flow.with_options(task_runner=task_runner(runner, 2))(
            session, "ingest", return_state=True)
    art = session.artifacts["ingest"]
    if runner is not None:
        assert _shard_task_runs(state) == sorted(
            f"ingest-shard-{i}:Completed" for i in range(art.manifest.counts["ingest_shards"]))
    assert not (art.path / "_shards").exists()
    # files.parquet (the drops' file versions) names each source file by its path, which
    # differs between the three roots
    return art.manifest.counts, {p.name: p.read_bytes() for p in sorted(art.path.glob("*.parquet"))
                                 if p.name != "files.parquet"}


@pytest.mark.slow
@pytest.mark.integration
def test_threads_and_dask_write_the_same_bytes(harness, samples_dir: Path,
                                               tmp_path: Path) -> None:
    alone = _ingest(samples_dir, tmp_path / "alone", None)
    threads = _ingest(samples_dir, tmp_path / "threads", "threads")
    dask = _ingest(samples_dir, tmp_path / "dask", "dask")
    counts, files = alone
    # hpo (0.49 MB) in 2 pieces, icd10cm (0.22) whole, healthnews (0.40) in 2, news (0.94) in 4
    assert counts["ingest_shards"] == 9 and counts["files"] == 4
    assert (counts["docs_in"] == counts["kept"] + counts["excluded"]
            == sum(SLICE_LINES.values()) + GENERAL_LINES)
    assert {"train-00000.parquet", "eval.parquet", "excluded.parquet", "modified.parquet",
            "stats.parquet"} <= set(files)
    assert threads == alone
    assert dask == alone


def test_unknown_runner_is_named() -> None:
    with pytest.raises(ValueError, match="ingest_runner 'spark'"):
        task_runner("spark")
