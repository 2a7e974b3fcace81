"""The domain pipeline as a Prefect flow: ingest -> tokenizer -> pretrain -> finetune -> evaluate.

Runs without a server (Prefect's ephemeral mode) and shows in a Prefect UI when
``PREFECT_API_URL`` points at one. Caching has one source of truth, the artifact key: it is the
task's cache key, and the cache is refreshed whenever the artifact is missing or must be rebuilt,
so the UI shows ``Cached`` exactly when the artifact exists.

The flow run ends Completed in three shapes: promoted (or nothing to promote), ``NotPromoted``
(evaluate's gates failed: the domain's promoted model stays; the message says which gate, e.g.
"not promoted: general bits/byte +4.1% > 3% ...") and ``UpToDate`` (``init: promoted`` with no new
data since the promoted model). A broken stage still fails the run.
"""

from __future__ import annotations

from typing import Any

from prefect import Task, flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.states import Completed

from flows.ingest_flow import ingest_flow, task_runner
from pipeline import NotPromoted
from pipeline.runner import Session, is_transient, select


def _artifact_cache_key(ctx: TaskRunContext, params: dict[str, Any]) -> str:
    return f"dapt-{params['stage']}-{params['key']}"


def _retry_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    return is_transient(state.result(raise_on_failure=False))


@task(cache_key_fn=_artifact_cache_key, persist_result=True, task_run_name="{stage}")
def stage_task(session: Session, stage: str, key: str, force: bool, build_missing: bool
               ) -> dict[str, Any]:
    return session.run_stage(stage, force=force, build_missing=build_missing)


@flow(name="dapt-domain-pipeline", log_prints=True)
def domain_pipeline(domain: str | None = None, profile: str = "tiny", only: str | None = None,
                    from_stage: str | None = None, force: bool = False,
                    workdir: str | None = None, domain_file: str | None = None,
                    ingest_runner: str = "threads", ingest_workers: int = 2,
                    init: str | None = None, overrides: list[str] | None = None) -> State:
    """``init`` (base, promoted) overrides the YAML's ``pretrain.init``; schedules pass
    promoted (flows.deploy). ``overrides``: ``PATH=VALUE`` strings applied to the resolved
    config (``dapt run --set``). Returns the final state, whose data is the report's path."""
    params = {"profile": profile, "only": only, "from_stage": from_stage, "force": force,
              "domain_file": domain_file, "init": init, "overrides": overrides or []}
    session = Session.open(domain, profile, workdir=workdir, domain_file=domain_file,
                           params=params, init=init, overrides=overrides)
    try:
        stages, rebuild = select(only, from_stage)
        if not (only or from_stage or force) and (idle := session.up_to_date()):
            session.finish_idle(idle)
            return Completed(name="UpToDate", message=idle, data=None)
        retries = session.domain.spec.retries
        for stage in stages:
            build = force or stage in rebuild
            if stage == "ingest" and session.needs_build(stage, build):  # shards as tasks
                runner = task_runner(ingest_runner, ingest_workers)
                # --force redoes the per-shard work too; --only reuses it
                ingest_flow.with_options(task_runner=runner)(session, build, force)
            else:
                options = {"refresh_cache": session.needs_build(stage, build),
                           "retries": retries.count, "retry_delay_seconds": retries.delay_s,
                           "retry_condition_fn": _retry_transient}
                state = stage_task.with_options(**options)(
                    session, stage, session.plan[stage].key, build, not only,
                    return_state=True)
                if state.name == "Cached":
                    session.record_cached(stage)
                else:
                    state.result()  # re-raises the stage's error
            if stage == "ingest" and not only and (idle := session.empty_drop()):
                session.finish_idle(idle)
                return Completed(name="UpToDate", message=idle, data=None)
        report = session.finish()
    except NotPromoted as exc:  # a verdict, not a crash: the promoted model stays
        rejected = session.reject(exc)
        assert session.decision is not None
        return Completed(name="NotPromoted", message=session.decision.message,
                         data=str(rejected))
    except BaseException as exc:
        session.fail(exc)
        raise
    if report:
        key = f"dapt-{session.domain.name.replace('_', '-')}-report"
        create_markdown_artifact((report.parent / "summary.md").read_text(), key=key,
                                 description=f"dapt report, run {session.run_id}")
    decision = session.decision
    return Completed(name="NotPromoted" if decision and not decision.promoted else "Completed",
                     message=decision.message if decision else None,
                     data=str(report) if report else None)
