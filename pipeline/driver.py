"""One run of a domain: plan its steps, execute them through the one driver, then the outcome.

    from pipeline.driver import Session
    session = Session.open("medical", "tiny")
    session.run_all()                     # every step, in process (no Prefect)
    session.plan["pretrain"].key          # every step's key is known up front

``Session.open`` resolves the domain for a profile, finds the lineage a continued run extends
(``pretrain.init: promoted``), and plans every step (``pipeline.engine.plan`` over
``pipeline.stages.steps.STEPS``). Nothing is recorded until the run starts: ``run_all`` (and the
Prefect flow, with its own step runner) go through ``pipeline.engine.execute.drive``, which
inserts the run's catalog row (with this process's pid and host, so a run whose process died
shows as ``crashed``), runs the selected steps and closes the run: ``finish`` (report, promotion),
``reject`` (a gate failed: the promoted model stays), ``finish_idle`` (nothing new) or ``fail``.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import NotPromoted
from pipeline import domains as domain_registry
from pipeline.config import RunConfig, with_init
from pipeline.domains import Domain
from pipeline.engine.artifacts import Artifact, ArtifactStore, DigestCache
from pipeline.engine.catalog import Catalog
from pipeline.engine.execute import Executor, Outcome, drive
from pipeline.engine.plan import Plan, PlanContext, plan_steps
from pipeline.lifecycle import ops, promotion, tracking
from pipeline.stages.steps import STEPS

log = logging.getLogger("dapt")
# Source files' content digests, remembered across plans (``artifacts.DigestCache``).
DIGESTS = "digests.json"


def default_workdir() -> Path:
    return Path(os.environ.get("DAPT_WORKDIR", "dapt-work")).resolve()


def lineage(run: RunConfig, workdir: Path, domain: str) -> promotion.Lineage | None:
    """The lineage a run continues (``pretrain.init: promoted`` with a promoted model)."""
    if run.pretrain.init != "promoted" or not (workdir / "catalog.duckdb").exists():
        return None
    return promotion.continued(Catalog(workdir / "catalog.duckdb"),
                               ArtifactStore(workdir / "artifacts"), domain, run)


def plan(domain: Domain, run: RunConfig, workdir: Path,
         continued: promotion.Lineage | None = None) -> Plan:
    """Every step of ``domain``'s run with its key; runs nothing."""
    files = domain_registry.check_paths(run, domain, workdir)
    ctx = PlanContext(domain, run, workdir, ArtifactStore(workdir / "artifacts"), files,
                      DigestCache(workdir / DIGESTS), continued)
    return plan_steps(STEPS, ctx)


class Session:
    """One run: its plan, its executor, its outcome."""

    def __init__(self, domain: Domain, run: RunConfig, workdir: Path, params: dict[str, Any]):
        self.domain, self.run, self.workdir, self.params = domain, run, workdir, params
        self.store = ArtifactStore(workdir / "artifacts")
        self.catalog = Catalog(workdir / "catalog.duckdb")
        self.lineage = promotion.continued(self.catalog, self.store, domain.name, run)
        self.plan = plan(domain, run, workdir, self.lineage)
        self.decision: promotion.Decision | None = None  # set by finish / reject / idle
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.executor = Executor(self.plan, self.store, self.catalog, self.run_id, domain.name)
        self._started = False

    @classmethod
    def open(cls, domain: str | None, profile: str = "tiny", *, workdir: str | Path | None = None,
             domain_file: str | Path | None = None, params: dict[str, Any] | None = None,
             init: str | None = None, overrides: list[str] | None = None) -> Session:
        """``init`` overrides the YAML's ``pretrain.init`` (base or promoted); ``overrides``
        are ``PATH=VALUE`` strings (``dapt run --set``, ``pipeline/overrides.py``)."""
        d = domain_registry.select(domain, domain_file)
        work = Path(workdir).resolve() if workdir else default_workdir()
        return cls(d, with_init(d.resolve(profile, overrides), init), work, params or {})

    @property
    def artifacts(self) -> dict[str, Artifact]:
        return self.executor.artifacts

    # --- the steps -----------------------------------------------------------------------

    def start(self) -> None:
        """Insert the run's catalog row (once): this process's pid and host mark it, so a
        run whose process is gone shows as crashed."""
        if not self._started:
            self.catalog.start_run(self.run_id, self.domain.name, self.run.profile, self.params,
                                   pid=os.getpid(), host=socket.gethostname())
            self._started = True

    def needs_build(self, name: str, force: bool) -> bool:
        return self.executor.needs_build(name, force)

    def run_stage(self, name: str, *, force: bool = False, build_missing: bool = True,
                  map_shards: Callable | None = None, redo_shards: bool = False
                  ) -> dict[str, Any]:
        """Build or reuse one step (``pipeline.engine.execute.Executor.run_step``)."""
        self.start()
        return self.executor.run_step(name, force=force, build_missing=build_missing,
                                      map_shards=map_shards, redo=redo_shards)

    def record_cached(self, name: str) -> dict[str, Any]:
        """Record a step Prefect served from its cache (the artifact exists: see the flow)."""
        return self.run_stage(name, build_missing=False)

    def up_to_date(self) -> str | None:
        """Why the run has nothing to do, asked of each step's spec; None when there is work."""
        for step in self.plan.values():
            if step.spec.up_to_date and (why := step.spec.up_to_date(self.plan.ctx, self.plan)):
                return why
        return None

    def stops_after(self, name: str) -> str | None:
        """Why the run stops after step ``name`` (its spec's ``stops``); None: go on."""
        spec, art = self.plan[name].spec, self.artifacts.get(name)
        return spec.stops(self.plan.ctx, art) if spec.stops and art is not None else None

    def run_all(self, only: str | None = None, from_stage: str | None = None,
                force: bool = False) -> Path | None:
        """Every selected step in this process. Raises ``NotPromoted`` when a gate failed
        (after the run is closed as not promoted)."""
        outcome = self.drive(only, from_stage, force)
        if outcome.rejection is not None:
            raise outcome.rejection
        return outcome.report

    def drive(self, only: str | None = None, from_stage: str | None = None,
              force: bool = False, runner: Callable | None = None, upto: str | None = None
              ) -> Outcome:
        """The one driver (``pipeline.engine.execute.drive``) with this run's hooks; the flow
        passes a runner that wraps each step in a Prefect task."""
        def in_process(name: str, *, force: bool, build_missing: bool, redo: bool) -> Any:
            return self.run_stage(name, force=force, build_missing=build_missing,
                                  redo_shards=redo)

        return drive(self, runner or in_process, only, from_stage, force, upto)

    # --- the outcome ---------------------------------------------------------------------

    def _run_row(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "domain": self.domain.name, "profile": self.run.profile}

    def finish(self) -> Path | None:
        """Write ``runs/<run_id>/report.{md,html}`` (when the verdict step ran) and close the
        run; a verdict that passed its gates may move the domain's promoted model."""
        self.start()
        verdict, model = self.plan.by_role("verdict"), self.plan.by_role("model")
        with self.catalog.held():  # a handful of quick queries: one connection
            rows = self.catalog.stage_runs(self.run_id)
            report_path = None
            if verdict is not None and any(r["stage"] == verdict.kind for r in rows):
                origin = f"Domain from {self.domain.origin}" + (
                    f" (`{self.domain.path}`)." if self.domain.path else ".")
                report_path = ops.write_run_report(self.store, self.catalog, self._run_row(),
                                                   self.workdir / "runs" / self.run_id,
                                                   [("p", origin)], pii=self.run.ingest.pii)
            if verdict is not None and model is not None and any(
                    r["stage"] == verdict.kind and r["status"] == "completed" for r in rows):
                self.decision = promotion.decide(self.catalog, self.domain.name, model.key,
                                                 self.run_id, [])
                log.info("%s", self.decision.message)
            self.catalog.finish_run(
                self.run_id, "completed",
                error=None if self.decision is None or self.decision.promoted
                else self.decision.message,
                report_path=str(report_path) if report_path else None)
        logged = self.track("completed", report_path)
        if (logged is not None and self.decision is not None and self.decision.promoted
                and model is not None):  # a rerun that built nothing moved no pointer either
            tracking.set_champion(self.workdir, self.domain.name, model.key)
        return report_path

    def track(self, status: str, report: Path | None) -> str | None:
        """Log the run to MLflow (``pipeline.lifecycle.tracking``): params, each step's metrics,
        the model step's curve, the report, and its export as a model version."""
        steps = self.catalog.stage_runs(self.run_id)
        if status in ("completed", "up to date") and all(s["cache_hit"] for s in steps):
            # a rerun that built nothing adds nothing to what the building run logged, and
            # importing MLflow would cost a fully cached rerun seconds
            log.info("MLflow: nothing was built; run %s not logged", self.run_id)
            return None
        model = self.plan.by_role("model")
        art = self.artifacts.get(model.name) if model is not None else None
        hf = art.path / "hf" if art is not None and (art.path / "hf").is_dir() else None
        return tracking.log_run(
            self.workdir, domain=self.domain.name, run_id=self.run_id, status=status,
            config=self.run.model_dump(mode="json"), params=self.params,
            steps=steps,
            curve=art.path / "metrics.jsonl" if art is not None else None,
            report_dir=report.parent if report is not None else None,
            model=(art.key, hf) if hf is not None else None)

    def reject(self, exc: NotPromoted) -> Path:
        """Close a run whose model failed the verdict's gates: the domain's promoted model
        stays, the candidate is recorded as rejected, the run's status is ``not promoted``."""
        verdict, model = self.plan.by_role("verdict"), self.plan.by_role("model")
        found = promotion.failed_evaluation(self.store, verdict.key) if verdict else None
        failures = ([promotion.gate_text(g) for g in promotion.failed_gates(found)]
                    or [str(exc.__cause__ or exc)])
        self.decision = promotion.decide(self.catalog, self.domain.name,
                                         model.key if model else "", self.run_id, failures)
        log.warning("%s", self.decision.message)
        report_file = promotion.evaluation_report(found)
        detail = (f"\n\nThe evaluation report of the candidate: {report_file}"
                  if report_file else "")
        report_path = ops.write_failure_report(self.catalog, self._run_row(),
                                               self.workdir / "runs" / self.run_id,
                                               self.decision.message + detail,
                                               not_promoted=True,
                                               candidate=promotion.candidate_evaluation(found))
        self.catalog.finish_run(self.run_id, "not promoted", error=self.decision.message,
                                report_path=str(report_path))
        self.track("not promoted", report_path)
        return report_path

    def finish_idle(self, message: str) -> None:
        """Close a run that had nothing new to train on (``up_to_date``, ``stops_after``)."""
        self.decision = promotion.Decision(True, message)
        log.info("%s", message)
        self.catalog.finish_run(self.run_id, "up to date", error=message)
        self.track("up to date", None)

    def fail(self, exc: BaseException) -> Path:
        """Close the run as failed; its report names the step that failed and the error."""
        self.start()
        error = f"{type(exc).__name__}: {exc}"
        report_path = ops.write_failure_report(self.catalog, self._run_row(),
                                               self.workdir / "runs" / self.run_id, error)
        self.catalog.finish_run(self.run_id, "failed", error=error, report_path=str(report_path))
        self.track("failed", report_path)
        return report_path
