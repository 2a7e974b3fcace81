"""A temporary Prefect API for the flow tests (one per test module), with results stored in a
temporary folder; and one small real run through ``dapt run`` against a real local server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from flows import server
from tests.e2e_domain import write_test_domain

ROOT = Path(__file__).resolve().parents[2]
# Smaller than the e2e profile: the run is here to be watched (server, progress, browser), not
# to learn; still every stage, 2 fine-tune seeds and a report with its plots.
SERVED_PROFILE = {"pretrain": {"max_steps": 10, "log_every": 2, "eval_every": 10},
                  "finetune": {"max_train_examples": 120, "max_test_examples": 60, "epochs": 1},
                  "evaluate": {"max_eval_docs": 40}}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    storage = tmp_path_factory.mktemp("prefect-results")
    with (temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(storage)}),
          prefect_test_harness(server_startup_timeout=120)):
        yield


def dapt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: a fresh process, output not a TTY."""
    full_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, env={**full_env, **(env or {})}, timeout=1800)


@pytest.fixture(scope="session")
def served_run(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``dapt server start`` in a fresh workdir, then one small ``dapt run`` that uses it.
    The server is stopped (and checked gone) at the end of the session."""
    root = tmp_path_factory.mktemp("served")
    domain_file = write_test_domain(samples_dir, root, **SERVED_PROFILE)
    work = root / "work"
    started = dapt("server", "start", "--workdir", str(work), "--port", "0")
    assert started.returncode == 0, started.stdout + started.stderr
    state = server.status(work)
    try:
        # a progress line per update, so the test sees every stage's lines on a small run
        result = dapt("run", "--domain-file", str(domain_file), "--workdir", str(work),
                      env={"DAPT_PROGRESS_INTERVAL_S": "0"})
        assert result.returncode == 0, result.stdout + result.stderr
        report = Path(result.stdout.split("report: ", 1)[1].split()[0])
        yield {"work": work, "url": state.url, "pid": state.pid, "result": result,
               "report": report, "domain_file": domain_file}
    finally:
        dapt("server", "stop", "--workdir", str(work))
        assert not server.group_members(state.pid), "the server left processes behind"
