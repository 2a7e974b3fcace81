"""The domain pipeline as a Prefect flow: every step of the plan a task, run by the one driver.

Runs without a server (Prefect's ephemeral mode) and shows in a Prefect UI when
``PREFECT_API_URL`` points at one. The flow is ``pipeline.driver.Session.drive`` with a step
runner that wraps each step in a Prefect task (a parallel step's shards become tasks of a
subflow, ``flows.shards``). Caching has one source of truth, the artifact key: it is the task's
cache key, and the cache is refreshed whenever the artifact is missing or must be rebuilt, so
the UI shows ``Cached`` exactly when the artifact exists.

The flow run ends Completed in three shapes: promoted (or nothing to promote), ``NotPromoted``
(evaluate's gates failed: the domain's promoted model stays; the message says which gate, e.g.
"not promoted: general bits/byte +4.1% > 3% ...") and ``UpToDate`` (``init: promoted`` with no new
data since the promoted model). A broken step fails the run (and its catalog row).
"""

from __future__ import annotations

from typing import Any

from prefect import Task, flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.states import Completed

from flows.shards import shards_flow, task_runner
from pipeline.driver import Session
from pipeline.engine.execute import is_transient


def _artifact_cache_key(ctx: TaskRunContext, params: dict[str, Any]) -> str:
    return f"dapt-{params['stage']}-{params['key']}"


def _retry_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    return is_transient(state.result(raise_on_failure=False))


@task(cache_key_fn=_artifact_cache_key, persist_result=True, task_run_name="{stage}")
def stage_task(session: Session, stage: str, key: str, force: bool, build_missing: bool
               ) -> dict[str, Any]:
    return session.run_stage(stage, force=force, build_missing=build_missing)


def prefect_steps(session: Session, ingest_runner: str, ingest_workers: int):
    """The step runner the driver calls: each step a cached task (retried on transient I/O
    errors), a parallel step that must build a subflow whose shards are tasks."""
    retries = session.domain.spec.retries

    def run(name: str, *, force: bool, build_missing: bool, redo: bool) -> None:
        build = session.needs_build(name, force)
        if session.plan[name].spec.parallel and build:
            runner = task_runner(ingest_runner, ingest_workers)
            shards_flow.with_options(task_runner=runner)(session, name, force, redo)
            return
        state = stage_task.with_options(
            refresh_cache=build, retries=retries.count, retry_delay_seconds=retries.delay_s,
            retry_condition_fn=_retry_transient)(session, name, session.plan[name].key, force,
                                                 build_missing, return_state=True)
        if state.name == "Cached":
            session.record_cached(name)
        else:
            state.result()  # re-raises the step's error

    return run


@flow(name="dapt-domain-pipeline", log_prints=True)
def domain_pipeline(domain: str | None = None, profile: str = "tiny", only: str | None = None,
                    from_stage: str | None = None, force: bool = False,
                    workdir: str | None = None, domain_file: str | None = None,
                    ingest_runner: str = "threads", ingest_workers: int = 2,
                    init: str | None = None, overrides: list[str] | None = None) -> State:
    """``init`` (base, promoted) overrides the YAML's ``pretrain.init``; schedules pass
    promoted (flows.deploy). ``overrides``: ``PATH=VALUE`` strings applied to the resolved
    config (``dapt run --set``). Returns the final state, whose data is the report's path."""
    from prefect.runtime import flow_run

    params = {"profile": profile, "only": only, "from_stage": from_stage, "force": force,
              "domain_file": domain_file, "init": init, "overrides": overrides or [],
              "flow_run_id": flow_run.id}
    session = Session.open(domain, profile, workdir=workdir, domain_file=domain_file,
                           params=params, init=init, overrides=overrides)
    outcome = session.drive(only, from_stage, force,
                            prefect_steps(session, ingest_runner, ingest_workers))
    if outcome.rejection is None and outcome.report:
        key = f"dapt-{session.domain.name.replace('_', '-')}-report"
        create_markdown_artifact((outcome.report.parent / "summary.md").read_text(), key=key,
                                 description=f"dapt report, run {session.run_id}")
    return Completed(name=outcome.state, message=outcome.message,
                     data=str(outcome.report) if outcome.report else None)
