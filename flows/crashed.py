"""Runs whose process is gone, shown as Crashed in the Prefect UI too.

The catalog reads a ``running`` run whose process (pid, host) no longer exists as ``crashed``
(``pipeline.engine.catalog.run_status``). A flow run killed with ``kill -9`` stays Running on
the Prefect server (nothing is left to report its end), so ``dapt runs`` and ``dapt compare``
set the flow run (its id is in the run's params) to Crashed when the workdir's server is up.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def flow_run_id(row: dict[str, Any]) -> str | None:
    params = row.get("params")
    if isinstance(params, str):
        params = json.loads(params or "{}")
    return (params or {}).get("flow_run_id")


def mark_crashed(workdir: Path, rows: Iterable[dict[str, Any]]) -> list[str]:
    """Set each crashed run's flow run to Crashed on the workdir's server; the ids it set."""
    crashed = [fid for r in rows if r.get("status") == "crashed" and (fid := flow_run_id(r))]
    if not crashed:
        return []
    from flows import server

    url, _ = server.api_url(workdir)
    if url is None:
        return []
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed

    done = []
    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        for fid in crashed:
            run = client.read_flow_run(fid)
            if run.state is not None and not run.state.is_final():
                client.set_flow_run_state(fid, Crashed(message="the process running it is "
                                                       "gone (dapt runs)"), force=True)
                done.append(fid)
    return done
