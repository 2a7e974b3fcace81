"""``dapt server``: a real local Prefect server, a real ``dapt run`` against it (checked through
Prefect's API), and its lifecycle: already running, port taken, died, stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows import server
from tests.flows.conftest import dapt

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # real Prefect servers


async def _server_records(api_url: str) -> dict:
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            flows = {f.id: f.name for f in await client.read_flows()}
            runs = await client.read_flow_runs()
            ids = [r.id for r in runs]
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["dapt-medtest-report"])))
    return {"runs": [(flows[r.flow_id], r.state.type.value) for r in runs],
            "tasks": [(t.name, t.state.type.value) for t in tasks], "artifacts": artifacts}


def test_run_uses_the_server_and_its_api_shows_runs_tasks_and_report(served_run: dict) -> None:
    result = served_run["result"]
    assert f"Prefect: using the server at {served_run['url']}" in result.stderr
    records = asyncio.run(_server_records(f"{served_run['url']}/api"))
    assert ("dapt-domain-pipeline", "COMPLETED") in records["runs"]
    assert ("dapt-shards", "COMPLETED") in records["runs"]  # the ingest shards subflow
    names = {name for name, state in records["tasks"] if state == "COMPLETED"}
    assert {"tokenizer", "pretrain", "finetune", "evaluate"} <= names
    shards = [n for n in names if n.startswith("ingest-shard-")]
    assert shards, records["tasks"]
    (artifact,) = records["artifacts"]
    assert artifact.type == "markdown"
    assert "| domain bits/byte (lower is better) |" in artifact.data
    assert served_run["report"].parent.name in artifact.description  # the run id


def test_lifecycle_already_running_port_taken_died_and_stopped(tmp_path: Path) -> None:
    work = tmp_path / "work"
    with socket.socket() as taken:  # a port something else listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        first = dapt("server", "start", "--workdir", str(work), "--port", str(port))
        assert first.returncode == 0, first.stderr
        assert f"port {port} is in use; using" in first.stdout
        state = server.status(work)
        assert state.status == "running" and not state.url.endswith(f":{port}")
    assert (work / "prefect-server/prefect.db").exists()  # the database lives in the workdir
    again = dapt("server", "start", "--workdir", str(work))
    assert again.returncode == 0 and "already running" in again.stdout
    assert server.status(work).pid == state.pid
    status = dapt("server", "status", "--workdir", str(work))
    assert status.returncode == 0 and state.url in status.stdout

    os.kill(state.pid, signal.SIGKILL)  # the server dies
    deadline = time.monotonic() + 30
    while server.group_members(state.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    dead = dapt("server", "status", "--workdir", str(work))
    assert dead.returncode == 1 and "is not running" in dead.stdout
    assert "stale pid file" in dead.stdout
    url, line = server.api_url(work)  # what `dapt run` does: ephemeral mode, said in one line
    assert url is None and "died (stale pid file); ephemeral mode" in line
    stopped = dapt("server", "stop", "--workdir", str(work))
    assert stopped.returncode == 0 and "had died; removed its stale pid file" in stopped.stdout
    assert server.status(work).status == "stopped"

    restarted = dapt("server", "start", "--workdir", str(work), "--port", "0")
    assert restarted.returncode == 0, restarted.stderr
    state = server.status(work)
    assert state.status == "running" and server.group_members(state.pid)
    stopped = dapt("server", "stop", "--workdir", str(work))
    assert stopped.returncode == 0 and f"stopped the server at {state.url}" in stopped.stdout
    assert not server.group_members(state.pid)  # no orphans
    assert not (work / "prefect-server/server.pid").exists()
    assert dapt("server", "status", "--workdir", str(work)).returncode == 1
