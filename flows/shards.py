"""A parallel step's shards as Prefect tasks, on the chosen task runner.

A step whose spec is ``parallel`` (ingest) takes a ``map_shards(fn, jobs)`` function: this one
submits each job as a task and waits for them in order, so the step's global work sees the same
shard outputs whichever runner ran them: threads here, a local Dask cluster, or a remote Dask or
Ray cluster.

    ingest_runner  "threads" (default) | "dask" (a local cluster of ``ingest_workers``
                   processes) | "tcp://scheduler:8786" (an existing Dask cluster) |
                   "ray://head:10001" (a Ray cluster; needs ``prefect-ray``)

On a remote cluster the workers write the shards into the artifact's build directory, so the
workdir must be on storage every worker mounts (as for multi-node training).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.driver import Session
from pipeline.engine import progress


@task(task_run_name="{step}-shard-{index}")
def shard_task(fn: Callable, step: str, index: int, job: tuple) -> Any:
    return fn(*job)


def prefect_map(step: str) -> Callable[[Callable, list[tuple]], list[Any]]:
    """A ``map_shards`` for step ``step``: one Prefect task per job, results in job order."""
    def mapped(fn: Callable, jobs: list[tuple]) -> list[Any]:
        futures = [shard_task.submit(fn, step, i, job) for i, job in enumerate(jobs)]
        results = []
        with progress.track(f"{step}: shards", len(jobs), "shards") as bar:
            for future in futures:  # in order: the bar may lag a shard that finished early
                results.append(future.result())
                bar.update()
        return results

    return mapped


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


@flow(name="dapt-shards", flow_run_name="{step}")
def shards_flow(session: Session, step: str, force: bool = False, redo: bool = False
                ) -> dict[str, Any]:
    """One parallel step, its shards mapped as tasks (the subflow's task runner)."""
    return session.run_stage(step, force=force, map_shards=prefect_map(step), redo_shards=redo)
