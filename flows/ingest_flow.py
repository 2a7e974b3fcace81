"""Ingest as a subflow whose shards are Prefect tasks on the chosen task runner.

``pipeline.stages.ingest.run`` takes a ``map_shards`` function; this one submits each shard
(``prepare_shard``: everything done to a document alone) as a task and waits for them in order,
so the global steps (dedup, split, decontamination) see the same shard outputs whichever runner
ran them: threads here, a local Dask cluster, or a remote Dask or Ray cluster.

    ingest_runner  "threads" (default) | "dask" (a local cluster of ``ingest_workers``
                   processes) | "tcp://scheduler:8786" (an existing Dask cluster) |
                   "ray://head:10001" (a Ray cluster; needs ``prefect-ray``)

On a remote cluster the workers write the shards into the artifact's build directory, so the
workdir must be on storage every worker mounts (as for multi-node training).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.config import IngestConfig
from pipeline.engine import progress
from pipeline.engine.runner import Session
from pipeline.stages import ingest


@task(task_run_name="ingest-shard-{index}")
def shard_task(index: int, config: IngestConfig, pieces: list[ingest.Piece],
               shard_dir: Path, cache: ingest.drops.ShardCache | None = None) -> dict[str, Any]:
    if cache is None:
        return ingest.prepare_shard(config, pieces, shard_dir)
    return ingest.cached_shard(config, pieces, shard_dir, cache)  # reused or built, in the store


def prefect_map(fn: Callable, jobs: list[tuple]) -> list[Any]:
    if fn not in (ingest.prepare_shard, ingest.cached_shard):
        raise ValueError(f"prefect_map maps ingest.prepare_shard or cached_shard only, not {fn}")
    futures = [shard_task.submit(i, *job) for i, job in enumerate(jobs)]
    results = []
    with progress.track("ingest: shards", len(jobs), "shards") as bar:
        for future in futures:  # in order: the bar may lag a shard that finished early
            results.append(future.result())
            bar.update()
    return results


def task_runner(name: str = "threads", workers: int = 2):
    if name == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if name.startswith("ray://"):
        from prefect_ray.task_runners import RayTaskRunner

        return RayTaskRunner(address=name)
    from prefect_dask import DaskTaskRunner

    if name == "dask":
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    if name.startswith("tcp://"):
        return DaskTaskRunner(address=name)
    raise ValueError(f"ingest_runner {name!r}: use threads, dask, tcp://HOST:PORT (Dask) or "
                     "ray://HOST:PORT (Ray)")


@flow(name="dapt-ingest")
def ingest_flow(session: Session, force: bool = False, redo_shards: bool = False
                ) -> dict[str, Any]:
    return session.run_stage("ingest", force=force, map_shards=prefect_map,
                             redo_shards=redo_shards)
