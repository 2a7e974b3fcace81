"""Deployments against a real local Prefect server: register, check schedules, run one.

Starts `prefect server start` on 127.0.0.1 (fresh PREFECT_HOME, bounded wait, killed at the
end). Every Prefect call runs in a subprocess with its own environment, so this module's
PREFECT_API_URL never leaks into the tests that use `prefect_test_harness`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipeline.engine.catalog import Catalog
from tests.e2e_domain import write_test_domain

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # a Prefect server and worker

BIN = Path(sys.executable).parent
FAST = {"pretrain": {"max_steps": 10, "warmup_steps": 1, "log_every": 5},
        "finetune": {"max_train_examples": 100, "max_test_examples": 50, "epochs": 1, "seeds": [0]},
        "evaluate": {"max_eval_docs": 20}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "results")}
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen([BIN / "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(f"prefect server did not start: {(home / 'server.log').read_text()}")
            time.sleep(1)
    yield env
    _stop(proc)
    log.close()


def _client(env: dict, code: str, timeout: int = 60) -> object:
    """Run ``code`` (an async body that ``return``s JSON-able data) with a Prefect client."""
    script = ("import asyncio, json\nfrom prefect.client.orchestration import get_client\n"
              "async def main():\n    async with get_client() as client:\n"
              + "".join(f"        {line}\n" for line in code.strip().splitlines())
              + "print(json.dumps(asyncio.run(main()), default=str))\n")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=timeout, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def domain_file(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deploy")
    path = write_test_domain(samples_dir, root, **FAST)
    doc = yaml.safe_load(path.read_text())
    doc["schedule"] = {"cron": "0 4 * * 1", "timezone": "Europe/Berlin",
                       "parameters": {"profile": "tiny", "workdir": str(root / "work")}}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_deploy_registers_scheduled_deployment(server: dict, domain_file: Path) -> None:
    result = subprocess.run([BIN / "dapt", "deploy", "--domain-file", str(domain_file),
                             "--pool", "dapt-test"], env=server, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "deployed dapt-domain-pipeline/dapt-medtest to work pool 'dapt-test'" in result.stdout
    d = _client(server, """
d = await client.read_deployment_by_name("dapt-domain-pipeline/dapt-medtest")
pool = await client.read_work_pool("dapt-test")
return {"schedules": [[s.schedule.cron, s.schedule.timezone, s.active] for s in d.schedules],
        "parameters": d.parameters, "pool": d.work_pool_name, "pool_type": pool.type,
        "entrypoint": d.entrypoint}""")
    assert d["schedules"] == [["0 4 * * 1", "Europe/Berlin", True]]
    assert d["parameters"]["domain_file"] == str(domain_file)
    assert d["parameters"]["profile"] == "tiny"
    assert d["pool"] == "dapt-test" and d["pool_type"] == "process"
    assert d["entrypoint"] == "flows/domain_flow.py:domain_pipeline"


def test_serve_runs_a_triggered_deployment_to_completion(server: dict, domain_file: Path
                                                        ) -> None:
    log_path = domain_file.parent / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([BIN / "dapt", "serve", "--domain-file", str(domain_file)],
                                env=server, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "dapt-medtest" not in log_path.read_text():  # serve prints its deployments
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(1)
        # the served flow with its schedule's parameters plus `only: ingest`: what is tested
        # here is the deployment's path (serve -> worker -> flow -> catalog); the whole pipeline
        # through the flow is test_domain_flow's and the served run's (conftest.py)
        state = _client(server, """
from prefect.deployments import run_deployment
run = await run_deployment("dapt-domain-pipeline/dapt-medtest", timeout=600, poll_interval=2,
                           client=client, parameters={"only": "ingest"})
return [run.state.type.value, run.parameters]""", timeout=660)
    finally:
        _stop(proc)
    assert state[0] == "COMPLETED", log_path.read_text()[-3000:]
    assert state[1]["init"] == "promoted" and state[1]["only"] == "ingest"  # schedule's + ours
    work = Path(state[1]["workdir"])
    catalog = Catalog(work / "catalog.duckdb")
    [run] = catalog.runs("medtest")
    assert run["status"] == "completed"
    [stage] = catalog.stage_runs(run["run_id"])
    assert (stage["stage"], stage["status"], stage["cache_hit"]) == ("ingest", "completed", False)
    [counts] = catalog.query("SELECT counts FROM artifacts WHERE key = ?", [stage["artifact_key"]])
    counts = json.loads(counts["counts"])
    assert counts["docs_in"] == counts["kept"] + counts["excluded"] and counts["kept"] > 1000
