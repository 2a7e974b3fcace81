"""A local Prefect server that ``dapt run`` reuses: ``dapt server start|stop|status``.

Prefect's ephemeral mode starts and stops a temporary API server on every ``dapt run`` (about
10 s of a cached rerun). ``dapt server start`` runs one long-lived server per workdir instead:

- its database, pid file and log live in ``<workdir>/prefect-server/`` (``prefect.db``,
  ``server.pid``, ``server.log``; ``server.json`` records the URL);
- it listens on 127.0.0.1 only, on port 4200 or, when that is taken, any free port;
- it runs in its own process group (session), so ``stop`` ends it and every child it started;
- ``dapt run`` in the same workdir finds it (``api_url``) and sends its runs there, so runs,
  task states, artifacts and the report summary show in its UI at ``http://127.0.0.1:PORT``.

This module never imports Prefect: the server is ``python -m prefect server start`` in a child
process, and its health is checked over HTTP with the standard library.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.engine.processes import alive

HOST = "127.0.0.1"
DEFAULT_PORT = 4200
# A fresh database took 17 s to become healthy on an idle 2-core machine, and over 120 s on the
# same machine under a load of 17 at nice 15.
START_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 20.0


def server_dir(workdir: Path) -> Path:
    return workdir / "prefect-server"


@dataclass(frozen=True)
class ServerState:
    """What ``status`` found: ``running`` (answers), ``unresponsive`` (its process lives but does
    not answer: starting, or hung), ``dead`` (stale pid file) or ``stopped`` (no pid file)."""

    status: str
    pid: int | None = None
    url: str | None = None
    log: Path | None = None

    @property
    def api_url(self) -> str | None:
        return f"{self.url}/api" if self.url else None

    def describe(self) -> str:
        if self.status == "running":
            return f"Prefect server running at {self.url} (pid {self.pid}); UI: {self.url}"
        if self.status == "unresponsive":
            return (f"Prefect server (pid {self.pid}) runs but does not answer at {self.url} "
                    f"(still starting, or hung); see {self.log}")
        if self.status == "dead":
            return (f"Prefect server (pid {self.pid}) is not running: stale pid file "
                    f"{self.log.parent / 'server.pid' if self.log else ''}; see {self.log}")
        return "no Prefect server running for this workdir"


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def port_free(port: int) -> bool:
    """Nothing listens on ``port`` (a recently closed one in TIME_WAIT is free to the server,
    which binds with SO_REUSEADDR like this check)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_port(preferred: int = DEFAULT_PORT) -> int:
    """``preferred`` when nothing listens on it, else a free port the kernel picks."""
    if preferred and port_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def status(workdir: Path) -> ServerState:
    d = server_dir(workdir)
    pid_file, info_file = d / "server.pid", d / "server.json"
    if not pid_file.exists():
        return ServerState("stopped")
    try:
        pid = int(pid_file.read_text().strip())
        url = json.loads(info_file.read_text())["url"]
    except (ValueError, OSError, KeyError):
        return ServerState("dead", log=d / "server.log")
    if not alive(pid):
        return ServerState("dead", pid, url, d / "server.log")
    return ServerState("running" if healthy(url) else "unresponsive", pid, url, d / "server.log")


def api_url(workdir: Path) -> tuple[str | None, str]:
    """(the API URL ``dapt run`` should use or None for ephemeral mode, one line saying why)."""
    if os.environ.get("PREFECT_API_URL"):
        url = os.environ["PREFECT_API_URL"]
        return url, f"Prefect: using the server at {url} (PREFECT_API_URL)"
    state = status(workdir)
    if state.status == "running":
        return state.api_url, f"Prefect: using the server at {state.url} (UI there)"
    why = {"dead": "the server recorded in this workdir died (stale pid file)",
           "unresponsive": "the server in this workdir does not answer (starting, or hung)",
           "stopped": "no server running"}[state.status]
    return None, (f"Prefect: {why}; ephemeral mode (a temporary server for this run, ~10 s "
                  f"slower): `dapt server start --workdir {workdir}` to reuse one")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(True)[-lines:])
    except OSError:
        return ""


def start(workdir: Path, port: int = DEFAULT_PORT, timeout: float = START_TIMEOUT_S
          ) -> tuple[ServerState, bool]:
    """Start the workdir's server unless one runs; (its state, whether this call started it)."""
    state = status(workdir)
    deadline = time.monotonic() + timeout
    while state.status == "unresponsive" and time.monotonic() < deadline:  # another start's?
        time.sleep(1.0)
        state = status(workdir)
    if state.status == "running":
        return state, False
    if state.status == "unresponsive":
        raise RuntimeError(f"{state.describe()} after {timeout:.0f} s; `dapt server stop` "
                           "ends it, then start again")
    d = server_dir(workdir)
    d.mkdir(parents=True, exist_ok=True)
    if state.status == "dead":  # stale pid file: the process group may have leftovers
        _kill_group(state.pid)
    chosen = pick_port(port)
    url = f"http://{HOST}:{chosen}"
    env = {**os.environ, "PREFECT_HOME": str(d), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{d / 'prefect.db'}"}
    env.pop("PREFECT_API_URL", None)
    log_path = d / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", HOST,
             "--port", str(chosen)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, cwd=d)
    (d / "server.json").write_text(json.dumps({"url": url, "port": chosen, "pid": proc.pid}))
    (d / "server.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            (d / "server.pid").unlink(missing_ok=True)
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode}; "
                               f"{log_path} ends:\n{_tail(log_path)}")
        if healthy(url, timeout=1.0):
            return ServerState("running", proc.pid, url, log_path), True
        time.sleep(0.5)
    _kill_group(proc.pid)
    (d / "server.pid").unlink(missing_ok=True)
    raise RuntimeError(f"the Prefect server did not answer at {url} within {timeout:.0f} s; "
                       f"{log_path} ends:\n{_tail(log_path)}")


def _ours(pgid: int) -> bool:
    """Group ``pgid`` still holds the server (or a child of it), not a recycled id."""
    for pid in group_members(pgid):
        try:
            if b"prefect" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _kill_group(pgid: int | None, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the group (the server started it with ``start_new_session``), SIGKILL what is
    left after ``timeout``."""
    if not pgid or not _ours(pgid):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # our own child: reap it
                os.waitpid(pgid, os.WNOHANG)
            if not any(alive(p) for p in group_members(pgid)):
                return
            time.sleep(0.2)


def stop(workdir: Path) -> ServerState:
    """Stop the workdir's server and every process in its group; remove the pid file.
    Returns the state it was in."""
    state = status(workdir)
    if state.pid:
        _kill_group(state.pid)
    server_dir(workdir).joinpath("server.pid").unlink(missing_ok=True)
    return state
