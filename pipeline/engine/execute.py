"""Executing a plan: build or reuse each step's artifact, record it, and the one driver loop.

``Executor.run_step`` builds one planned step through the artifact store (or reuses it) and
records it in the catalog; its inputs are the artifacts of the steps it needs, plus the
existing artifacts its spec names (a previous drop, the promoted model). ``drive`` is the only
loop that runs a plan's steps: plan -> execute -> outcome. The in-process runner
(``Session.run_all``), the Prefect flow, the sweep and the benches all call it; the flow passes
a step runner that wraps each step in a Prefect task. Nothing here names a step.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pipeline import GateFailure, NotPromoted, StageError
from pipeline.engine.artifacts import Artifact, ArtifactStore
from pipeline.engine.catalog import Catalog
from pipeline.engine.plan import Plan, Selection, select

log = logging.getLogger("dapt")

TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ESTALE, errno.ETIMEDOUT,
                    errno.ECONNRESET, errno.ECONNREFUSED, errno.EHOSTUNREACH}


def is_transient(exc: BaseException | None) -> bool:
    """Worth a retry: I/O that may succeed next time (network filesystems, locks, timeouts).

    Deterministic failures (bad config, quality gates, NaN loss, out of memory, a crashed
    training process) are not retried: they would fail the same way again.
    """
    while exc is not None:
        if isinstance(exc, (ConnectionError, TimeoutError, BlockingIOError, InterruptedError)):
            return True
        if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
            return True
        exc = exc.__cause__
    return False


class Executor:
    """Builds or reuses the planned steps of one run and records each in the catalog."""

    def __init__(self, plan: Plan, store: ArtifactStore, catalog: Catalog, run_id: str,
                 domain: str):
        self.plan, self.store, self.catalog = plan, store, catalog
        self.run_id, self.domain = run_id, domain
        self.artifacts: dict[str, Artifact] = {}
        self.results: dict[str, dict[str, Any]] = {}  # run_step's answer, by step

    def needs_build(self, name: str, force: bool) -> bool:
        step = self.plan[name]
        return step.prepared.reuse is None and (force or not self.plan.cached(step))

    def inputs(self, name: str, *, build_missing: bool) -> dict[str, Artifact]:
        step = self.plan[name]
        found = {}
        for need in step.needs:
            upstream = self.plan[need]
            art = self.artifacts.get(need) or self.store.get(upstream.kind, upstream.key)
            if art is None and build_missing:
                self.run_step(need)
                art = self.artifacts[need]
            if art is None:
                raise FileNotFoundError(
                    f"{name}: input artifact {upstream.kind}/{upstream.key} does not exist; "
                    f"run without --only, or with --from {need}")
            found[need] = art
        for input_name, (kind, key) in step.prepared.artifacts.items():
            art = self.store.get(kind, key)
            if art is None:
                raise FileNotFoundError(f"{name}: its input {input_name} ({kind}/{key}) is "
                                        "not in the artifact store any more")
            found[input_name] = art
        return found

    def run_step(self, name: str, *, force: bool = False, build_missing: bool = True,
                 map_shards: Callable | None = None, redo: bool = False) -> dict[str, Any]:
        """Build (or reuse) one step. ``map_shards``: how a parallel step maps its shards;
        ``redo``: rebuild its per-shard work too (``--force``), not only its artifact."""
        step = self.plan[name]
        started, t0 = datetime.now(UTC).replace(tzinfo=None), time.perf_counter()
        if step.prepared.reuse is not None:
            art, hit = step.prepared.reuse, True
            log.info("%s: reused as it is %s (frozen)", name, step.key)
        else:
            art, hit = self._build(step, force, build_missing, map_shards, redo, started)
        duration = 0.0 if step.prepared.reuse is not None else time.perf_counter() - t0
        self.artifacts[name] = art
        kinds = {n: self.plan[n].kind for n in step.needs}
        kinds.update({n: kind for n, (kind, _) in step.prepared.artifacts.items()})
        self.catalog.record_stage(self.run_id, self.domain, art, cache_hit=hit,
                                  started_at=started, duration_s=duration, input_kinds=kinds,
                                  step=name)
        if step.prepared.reuse is None:
            log.info("%s: %s %s (%.1fs)", name, "cached" if hit else "built", step.key,
                     duration)
        self.results[name] = {"stage": name, "key": step.key, "cache_hit": hit,
                              "duration_s": duration, "path": str(art.path)}
        return self.results[name]

    def _build(self, step: Any, force: bool, build_missing: bool, map_shards: Callable | None,
               redo: bool, started: datetime) -> tuple[Artifact, bool]:
        spec = step.spec
        kwargs: dict[str, Any] = {}
        if spec.parallel and map_shards is not None:
            kwargs["map_shards"] = map_shards
        if spec.options is not None:
            kwargs.update(spec.options(step, self.store, redo))
        try:
            inputs = self.inputs(step.name, build_missing=build_missing)
            return self.store.build(
                stage=step.kind, key=step.key, config_hash=step.config_hash, code=step.code,
                inputs=inputs, fn=lambda out: spec.fn()(step.config, inputs, out, **kwargs),
                force=force, resume=spec.resumable)
        except Exception as exc:
            self.catalog.record_stage_failure(self.run_id, step.kind, step.key, started,
                                              repr(exc), step=step.name)
            notes = "".join(f"\n{n}" for n in getattr(exc, "__notes__", []))
            error = NotPromoted if isinstance(exc, GateFailure) else StageError
            raise error(f"stage {step.name} failed (artifact {step.kind}/{step.key}): "
                        f"{exc}{notes}") from exc


class StepRunner(Protocol):
    def __call__(self, name: str, *, force: bool, build_missing: bool, redo: bool) -> Any: ...


class RunHooks(Protocol):
    """What the driver asks of a run around its steps (``pipeline.driver.Session``)."""

    plan: Plan
    decision: Any  # set by finish / reject / finish_idle: .promoted, .message

    def start(self) -> None: ...
    def up_to_date(self) -> str | None: ...
    def stops_after(self, name: str) -> str | None: ...
    def finish(self) -> Path | None: ...
    def finish_idle(self, message: str) -> None: ...
    def reject(self, exc: NotPromoted) -> Path: ...
    def fail(self, exc: BaseException) -> Path: ...


@dataclass(frozen=True)
class Outcome:
    """How a run ended: ``Completed`` (with the report, when one was written), ``UpToDate``
    (nothing new to train on) or ``NotPromoted`` (its model failed a gate). A broken step
    raises instead, after the run is marked failed."""

    state: str
    message: str | None
    report: Path | None
    rejection: NotPromoted | None = None


def drive(run: RunHooks, runner: StepRunner, only: str | None = None,
          from_step: str | None = None, force: bool = False, upto: str | None = None
          ) -> Outcome:
    """The one loop that runs a plan's steps: select, start the run, stop early when there is
    nothing to do, execute each selected step through ``runner``, then the outcome. A failure
    marks the run failed in the catalog (and re-raises), whoever called this."""
    selection: Selection = select(run.plan, only, from_step, force, upto)
    run.start()
    try:
        default = not (only or from_step or force or upto)
        if default and (idle := run.up_to_date()):
            run.finish_idle(idle)
            return Outcome("UpToDate", idle, None)
        for name in selection.steps:
            runner(name, force=name in selection.rebuild, build_missing=selection.build_missing,
                   redo=force)
            if not selection.only and (idle := run.stops_after(name)):
                run.finish_idle(idle)
                return Outcome("UpToDate", idle, None)
        report = run.finish()
    except NotPromoted as exc:  # a verdict, not a crash: the promoted model stays
        rejected = run.reject(exc)
        return Outcome("NotPromoted", run.decision.message, rejected, exc)
    except BaseException as exc:
        run.fail(exc)
        raise
    decision = run.decision
    if decision is not None and not decision.promoted:
        return Outcome("NotPromoted", decision.message, report)
    return Outcome("Completed", decision.message if decision else None, report)
