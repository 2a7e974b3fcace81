"""Whether a process still runs: the catalog uses it to tell a crashed run, the local Prefect
server's manager to tell a stale pid file."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal check has to do
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
