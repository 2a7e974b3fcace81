"""The local server's bookkeeping without starting one (the fast lane; test_server.py starts
real servers): pid files, port choice and the fallback line ``dapt run`` prints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flows import server


def _record(workdir: Path, pid: int, url: str = "http://127.0.0.1:9") -> None:
    d = server.server_dir(workdir)
    d.mkdir(parents=True)
    (d / "server.pid").write_text(f"{pid}\n")
    (d / "server.json").write_text(json.dumps({"url": url}))


def test_no_pid_file_is_stopped_and_run_falls_back(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert server.status(tmp_path).status == "stopped"
    url, line = server.api_url(tmp_path)
    assert url is None and line.startswith("Prefect: no server running; ephemeral mode")
    monkeypatch.setenv("PREFECT_API_URL", "http://10.0.0.1:4200/api")
    assert server.api_url(tmp_path)[0] == "http://10.0.0.1:4200/api"


def test_a_dead_server_is_a_stale_pid_file(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    _record(tmp_path, gone.pid)
    state = server.status(tmp_path)
    assert (state.status, state.pid) == ("dead", gone.pid)
    assert "stale pid file" in state.describe()
    url, line = server.api_url(tmp_path)
    assert url is None and "died (stale pid file)" in line
    # a live process that does not answer HTTP is not taken for a server
    _record(tmp_path / "other", os.getpid())
    assert server.status(tmp_path / "other").status == "unresponsive"


def test_a_port_in_use_is_replaced_by_a_free_one() -> None:
    with socket.socket() as busy:
        busy.bind((server.HOST, 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert not server.port_free(taken)
        other = server.pick_port(taken)
        assert other != taken and server.port_free(other)
