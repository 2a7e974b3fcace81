"""`dapt run` stopped with SIGTERM (a scheduler's stop, `kill`, `docker stop`) ends as Ctrl-C
does: the run is marked, and the temporary Prefect server it started goes with it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.server import group_members
from pipeline.engine.processes import alive
from tests.e2e_domain import write_test_domain

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone since the listing
        return b""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
def test_sigterm_stops_the_run_and_its_temporary_server(samples_dir: Path, tmp_path: Path
                                                        ) -> None:
    domain_file = write_test_domain(samples_dir, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    log = tmp_path / "run.log"
    with open(log, "w") as out:  # a file, not a pipe: an orphaned server would hold a pipe open
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "--domain-file", str(domain_file)],
            cwd=ROOT, env={**env, "DAPT_WORKDIR": str(tmp_path / "work")}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # the temporary server is up and the run is in the catalog: ingest has begun
        while "Beginning subflow run 'ingest'" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        # the run leads its own process group (start_new_session); the server it starts is in it
        server = [p for p in group_members(proc.pid) if b"uvicorn" in cmdline(p)]
        assert server, log.read_text()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()
        deadline = time.monotonic() + 30
        while any(alive(p) for p in server) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(alive(p) for p in server), log.read_text()
        assert "Crash detected! Execution was aborted by a termination signal" in log.read_text()
        # the catalog's row says how the run ended (not "running")
        runs = subprocess.run([sys.executable, "-m", "flows.cli", "runs", "--json", "--workdir",
                               str(tmp_path / "work")], cwd=ROOT, capture_output=True,
                              text=True, check=True)
        assert [r["status"] for r in json.loads(runs.stdout)] == ["failed"], runs.stdout
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


STOPPED_IN_A_FINALIZER = """
import os, signal, sys, time
from flows.cli_common import exit_on_sigterm

exit_on_sigterm()

class Transport:
    def __del__(self):  # as an asyncio transport's, run by the garbage collector
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the handler runs here and its SystemExit is "ignored"

Transport()
print("past the finalizer", flush=True)
time.sleep(60)
"""


def test_a_stop_raised_inside_a_finalizer_is_delivered_again() -> None:
    """The CI run of this file's first test once sent SIGTERM while a finalizer ran: Prefect's
    handler raised inside ``__del__``, Python ignored it, and the run finished (exit 0)."""
    proc = subprocess.run([sys.executable, "-c", STOPPED_IN_A_FINALIZER], cwd=ROOT,
                          capture_output=True, text=True, timeout=50)
    assert "Exception ignored" in proc.stderr  # the finalizer's exception was swallowed ...
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr  # ... and the stop held
