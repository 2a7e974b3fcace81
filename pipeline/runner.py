"""Plans and executes one run of a domain: artifact keys, stage selection, catalog records.

``Session.open`` resolves the domain for a profile, fingerprints its data files and computes
every stage's artifact key up front (config hash + code version + input keys), so the whole
plan is known before anything runs. ``Session.run_stage`` builds or reuses one artifact and
records it. The Prefect flow is a loop over these calls; the same loop without Prefect is
``Session.run_all``, used by the benchmark and handy in a notebook.

Stage selection:
- default: every stage; an artifact that exists is reused (a cache hit).
- ``only=S``: just ``S``, rebuilt; its inputs must already exist.
- ``from_stage=S``: ``S`` and everything downstream, rebuilt; missing upstream is built.
- ``force``: rebuild every selected stage.

With ``pretrain.init: promoted`` and a promoted model (``pipeline.promotion``), the plan
continues that lineage: the tokenizer stage is the lineage's tokenizer artifact (frozen: never
rebuilt, even with ``force``), pretraining starts from the promoted model (its key is an input
of pretrain's key, so a new promotion never serves a stale artifact), and evaluate gates the
candidate against it. ``finish`` then lets the verdict move the domain's promoted model.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import GateFailure, NotPromoted, StageError, ops, promotion
from pipeline import domains as domain_registry
from pipeline.artifacts import (
    Artifact,
    ArtifactStore,
    DigestCache,
    artifact_key,
    file_digest,
    stable_hash,
)
from pipeline.catalog import Catalog
from pipeline.config import STAGES, EvalSetConfig, PretrainConfig, RunConfig
from pipeline.domains import Domain
from pipeline.ingest import drops
from pipeline.train import control, models
from pipeline.versions import code_version

log = logging.getLogger("dapt")
# Source files' content digests, remembered across plans (``artifacts.DigestCache``).
DIGESTS = "digests.json"


@dataclass(frozen=True)
class StageSpec:
    """A stage: its module (with ``run``) and its inputs. Its code version hashes the module's
    import closure inside the project (``pipeline.versions``): found by reading the files, not
    by importing them, so a fully cached run never imports torch or DeepSpeed."""

    module: str
    needs: tuple[str, ...]
    resumable: bool = False  # continues from a killed build's checkpoints

    def fn(self) -> Callable[..., Any]:
        return importlib.import_module(self.module).run

    def code_version(self) -> str:
        return code_version(self.module)


STAGE_SPECS: dict[str, StageSpec] = {
    "ingest": StageSpec("pipeline.ingest", ()),
    "tokenizer": StageSpec("pipeline.tokenizer", ("ingest",)),
    "pretrain": StageSpec("pipeline.train.pretrain", ("ingest", "tokenizer"), resumable=True),
    "finetune": StageSpec("pipeline.finetune", ("pretrain",)),
    "evaluate": StageSpec("pipeline.evaluate", ("ingest", "tokenizer", "pretrain", "finetune")),
}


# In continue mode these stages also read the base model: the tokenizer reports (and may
# extend) its tokenizer, pretraining starts from its weights, fine-tuning trains it beside the
# adapted model (finetune.compare_base), evaluation scores it beside the adapted model.
BASE_MODEL_STAGES = ("tokenizer", "pretrain", "finetune", "evaluate")


# The control run (pipeline.train.control) is not a stage of the domain: its artifact is shared by
# every domain with the same recipe. Finetune and evaluate score it; it trains through the
# pretrain code.
CONTROL_STAGES = ("finetune", "evaluate")
CONTROL_MODULE = "pipeline.train.control"  # its code version is this module's import closure


def uses_control(run: RunConfig, stage: str) -> bool:
    return (run.pretrain.mode == "continue" and run.pretrain.control
            and any(s.general for s in run.ingest.sources) and stage in CONTROL_STAGES)


def general_sources(run: RunConfig, files: dict[str, list[Path]]
                    ) -> list[tuple[Any, list[Path]]]:
    """The general sources with their resolved files (what the control trains on)."""
    return [(s, files[f"ingest.sources[{i}].path"]) for i, s in enumerate(run.ingest.sources)
            if s.general]


def uses_base_model(run: RunConfig, stage: str) -> bool:
    if run.pretrain.mode != "continue" or stage not in BASE_MODEL_STAGES:
        return False
    return stage != "finetune" or run.finetune.compare_base


def eval_sets(run: RunConfig, files: dict[str, list[Path]], extra_inputs: dict[str, Any]
              ) -> list[EvalSetConfig]:
    """What ingest decontaminates against: the YAML's test sets and each fine-tune task's test
    split, paths resolved; their files and split settings join ingest's key."""
    if not run.ingest.decontamination.enabled:
        return []
    ft = run.finetune
    own = "ingest.decontamination.test_sets[{}].path"
    sets = [s.model_copy(update={"path": str(files[own.format(i)][0])})
            for i, s in enumerate(run.ingest.decontamination.test_sets)]
    sets += [EvalSetConfig(name=f"finetune:{t.name}",
                           path=str(files[f"finetune.tasks[{i}].path"][0]),
                           text_field=t.text_field, id_field=t.id_field,
                           test_fraction=ft.test_fraction, split_seed=ft.split_seed,
                           max_rows=ft.max_test_examples)
             for i, t in enumerate(ft.tasks)]
    for s in sets:
        extra_inputs[f"test_set:{s.name}"] = [file_digest(Path(s.path)), s.test_fraction,
                                              s.split_seed, s.max_rows]
    return sets


@dataclass(frozen=True)
class PlannedStage:
    stage: str
    key: str
    config_hash: str
    code: str
    config: Any  # the stage config with data paths resolved
    inputs: dict[str, Any]  # what the key hashed besides config and code
    drops: dict[str, Any] | None = None  # ingest: its lineage and every source file's digest


def default_workdir() -> Path:
    return Path(os.environ.get("DAPT_WORKDIR", "dapt-work")).resolve()


# Not hashed as config: what they change enters pretrain's key as inputs (the promoted model,
# the replay share) only when a lineage is continued, so init: promoted with nothing promoted
# yet shares its artifacts with init: base.
LINEAGE_FIELDS = {"init", "earlier_share"}


def with_init(run: RunConfig, init: str | None) -> RunConfig:
    """``run`` with ``pretrain.init`` overridden (a flow or CLI parameter), validated."""
    if init is None:
        return run
    if init not in ("base", "promoted"):
        raise ValueError(f"init {init!r}: allowed: base, promoted")
    pretrain = PretrainConfig.model_validate({**run.pretrain.model_dump(), "init": init})
    return run.model_copy(update={"pretrain": pretrain})


def lineage(run: RunConfig, workdir: Path, domain: str) -> promotion.Lineage | None:
    """The lineage a run continues (``pretrain.init: promoted`` with a promoted model)."""
    if run.pretrain.init != "promoted" or not (workdir / "catalog.duckdb").exists():
        return None
    return promotion.continued(Catalog(workdir / "catalog.duckdb"),
                               ArtifactStore(workdir / "artifacts"), domain, run)


def plan(domain: Domain, run: RunConfig, workdir: Path,
         continued: promotion.Lineage | None = None) -> dict[str, PlannedStage]:
    files = domain_registry.check_paths(run, domain, workdir)
    store = ArtifactStore(workdir / "artifacts")
    planned: dict[str, PlannedStage] = {}
    digest = DigestCache(workdir / DIGESTS)
    control_key = None
    if uses_control(run, "evaluate"):
        control_key = control.key(run.pretrain, general_sources(run, files), run.ingest.seed,
                                  models.base_key(run.pretrain.base_model),
                                  code_version(CONTROL_MODULE), digest)
    for stage in STAGES:
        config = run.stage(stage)
        extra_inputs: dict[str, Any] = {s: planned[s].key for s in STAGE_SPECS[stage].needs}
        if uses_base_model(run, stage):
            extra_inputs["models"] = models.base_key(run.pretrain.base_model)
        if uses_control(run, stage):
            extra_inputs["control"] = control_key
        drop_info = None
        if stage == "ingest":
            sources, digests = [], {}
            for i, source in enumerate(config.sources):
                paths = files[f"ingest.sources[{i}].path"]
                extra_inputs[f"source:{source.name}"] = [domain_registry.source_digest(p, digest)
                                                         for p in paths]
                digests.update(zip(map(str, paths), extra_inputs[f"source:{source.name}"],
                                   strict=True))
                sources.append(source.model_copy(update={
                    "path": domain_registry.resolve_path(source.path, domain, workdir)}))
            resolved = config.model_copy(update={"sources": sources, "decontamination": (
                config.decontamination.model_copy(update={
                    "test_sets": eval_sets(run, files, extra_inputs)}))})
        elif stage == "finetune":
            tasks = []
            for i, task in enumerate(config.tasks):
                task_path = files[f"finetune.tasks[{i}].path"][0]
                extra_inputs[f"task:{task.name}"] = file_digest(task_path)
                tasks.append(task.model_copy(update={"path": str(task_path)}))
            resolved = config.model_copy(update={"tasks": tasks})
        else:
            resolved = config
        config_json = config.model_dump(mode="json", exclude=LINEAGE_FIELDS
                                        if stage == "pretrain" else None)
        if continued is not None and stage == "tokenizer":  # frozen: the lineage's own
            tok = continued.tokenizer.manifest
            planned[stage] = PlannedStage(stage, tok.key, tok.config_hash, tok.code_version,
                                          resolved, dict(tok.inputs))
            continue
        if continued is not None and stage == "pretrain":
            extra_inputs["promoted"] = continued.model.key
            extra_inputs["earlier_share"] = run.pretrain.earlier_share
        if continued is not None and stage == "evaluate":
            extra_inputs["previous"] = continued.model.key
        code = STAGE_SPECS[stage].code_version()
        if stage == "ingest":
            # test sets are not the corpus: new ones apply from the next drop on
            drop_lineage = stable_hash({"domain": domain.name, "code": code, "config": {
                k: v for k, v in config_json.items() if k != "decontamination"}})
            previous_drop(store, drop_lineage, config_json, code, extra_inputs)
            drop_info = {"lineage": drop_lineage, "digests": digests}
        planned[stage] = PlannedStage(stage, artifact_key(config_json, code, extra_inputs),
                                      stable_hash(config_json), code, resolved, extra_inputs,
                                      drop_info)
    digest.save()
    return planned


def previous_drop(store: ArtifactStore, lineage: str, config_json: dict[str, Any], code: str,
                  extra_inputs: dict[str, Any]) -> None:
    """Ingest is the next drop of its lineage (same domain, ingest config and code): its
    input ``ingest`` is the lineage's newest drop, unless that drop was built from exactly these
    inputs (then this run is that drop again: a cache hit, or a rebuild of the same key)."""
    head = drops.head(store, lineage)
    if head is None:
        return
    before = head.manifest.inputs.get("ingest")
    same = {**extra_inputs, **({"ingest": before} if before else {})}
    if artifact_key(config_json, code, same) == head.key:
        extra_inputs.update(same)
    else:
        extra_inputs["ingest"] = head.key


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


def select(only: str | None, from_stage: str | None) -> tuple[list[str], set[str]]:
    """(stages to execute, stages to rebuild even if cached)."""
    for name, value in (("--only", only), ("--from", from_stage)):
        if value is not None and value not in STAGES:
            raise ValueError(f"{name} {value!r}: unknown stage"
                             f"{domain_registry.did_you_mean(value, STAGES)}; allowed: "
                             f"{', '.join(STAGES)}")
    if only and from_stage:
        raise ValueError("--only and --from cannot be combined: pick one")
    if only:
        return [only], {only}
    if from_stage:
        i = STAGES.index(from_stage)
        return list(STAGES), set(STAGES[i:])
    return list(STAGES), set()


class Session:
    """One run: its plan, its catalog rows and its report."""

    def __init__(self, domain: Domain, run: RunConfig, workdir: Path, params: dict[str, Any]):
        self.domain, self.run, self.workdir = domain, run, workdir
        self.store = ArtifactStore(workdir / "artifacts")
        self.catalog = Catalog(workdir / "catalog.duckdb")
        self.lineage = promotion.continued(self.catalog, self.store, domain.name, run)
        self.plan = plan(domain, run, workdir, self.lineage)
        self.decision: promotion.Decision | None = None  # set by finish / reject
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.artifacts: dict[str, Artifact] = {}
        self.catalog.start_run(self.run_id, domain.name, run.profile, params)

    @classmethod
    def open(cls, domain: str | None, profile: str = "tiny", *, workdir: str | Path | None = None,
             domain_file: str | Path | None = None, params: dict[str, Any] | None = None,
             init: str | None = None, overrides: list[str] | None = None) -> Session:
        """``init`` overrides the YAML's ``pretrain.init`` (base or promoted); ``overrides``
        are ``PATH=VALUE`` strings (``dapt run --set``, ``pipeline/overrides.py``)."""
        d = domain_registry.select(domain, domain_file)
        work = Path(workdir).resolve() if workdir else default_workdir()
        return cls(d, with_init(d.resolve(profile, overrides), init), work, params or {})

    def frozen(self, stage: str) -> bool:
        """The lineage's tokenizer: reused as it is, never rebuilt."""
        return stage == "tokenizer" and self.lineage is not None

    def needs_build(self, stage: str, force: bool) -> bool:
        if self.frozen(stage):
            return False
        return force or self.store.get(stage, self.plan[stage].key) is None

    def up_to_date(self) -> str | None:
        """Why a continued run has nothing to do: the promoted model already trained on this
        corpus (same ingest key: no new drop). None when there is work."""
        if self.lineage is None or self.lineage.ingest_key != self.plan["ingest"].key:
            return None
        return (f"up to date: the promoted model pretrain/{self.lineage.model.key} already "
                f"trained on this corpus (ingest/{self.plan['ingest'].key}); no new data")

    def empty_drop(self) -> str | None:
        """After ingest: why a continued run stops there, when the new drop kept no training
        document (every new one excluded, or no new file); None when there is work."""
        art = self.artifacts.get("ingest")
        if self.lineage is None or art is None or "drop" not in art.manifest.extra:
            return None
        c = art.manifest.counts
        if c.get("train_docs", 0) > 0:
            return None
        why = ", ".join(f"{k.removeprefix('excluded_')} {v}" for k, v in sorted(c.items())
                        if k.startswith("excluded_") and v) or "no new documents"
        return (f"up to date: drop {c.get('drop')} (ingest/{art.key}) adds no training "
                f"documents ({c.get('docs_in', 0)} in; excluded: {why}); the promoted model "
                f"pretrain/{self.lineage.model.key} stays")

    def inputs(self, stage: str, *, build_missing: bool) -> dict[str, Artifact]:
        found = {}
        for need in STAGE_SPECS[stage].needs:
            art = self.artifacts.get(need) or self.store.get(need, self.plan[need].key)
            if art is None and build_missing:
                self.run_stage(need)
                art = self.artifacts[need]
            if art is None:
                raise FileNotFoundError(
                    f"{stage}: input artifact {need}/{self.plan[need].key} does not exist; "
                    f"run without --only, or with --from {need}"
                )
            found[need] = art
        planned = self.plan[stage]
        for name in ("promoted", "previous"):  # the lineage's model (pretrain, evaluate)
            if name in planned.inputs and self.lineage is not None:
                found[name] = self.lineage.model
        if stage == "ingest" and "ingest" in planned.inputs:  # the previous drop
            previous = self.store.get("ingest", planned.inputs["ingest"])
            if previous is None:
                raise FileNotFoundError(f"ingest: the previous drop ingest/"
                                        f"{planned.inputs['ingest']} is gone")
            found["ingest"] = previous
        if "models" in planned.inputs:
            found["models"] = models.prepare(self.run.pretrain.base_model, self.store,
                                             key=planned.inputs["models"])
        if "control" in planned.inputs:
            files = domain_registry.check_paths(self.run, self.domain, self.workdir)
            # the base model's artifact, already found above in continue mode (its key hashes
            # the weights: do it once)
            base = found.get("models") or models.prepare(self.run.pretrain.base_model,
                                                         self.store)
            found["control"] = control.prepare(
                self.run.pretrain, general_sources(self.run, files), self.run.ingest.seed, base,
                self.store, key=planned.inputs["control"], code=code_version(CONTROL_MODULE))
        return found

    def run_stage(self, stage: str, *, force: bool = False, build_missing: bool = True,
                  map_shards: Callable | None = None, redo_shards: bool = False
                  ) -> dict[str, Any]:
        """``map_shards``: how ingest runs its shards (see ``pipeline.ingest.run``);
        ``redo_shards``: rebuild ingest's per-shard work too (``--force``), not only the
        ingest artifact (``--only ingest`` reuses it)."""
        p = self.plan[stage]
        extra: dict[str, Any] = {"map_shards": map_shards} if map_shards is not None else {}
        if p.drops is not None:
            extra["drops"] = drops.Drops(store=self.store, digests=p.drops["digests"],
                                         lineage=p.drops["lineage"], redo_shards=redo_shards)
        started, t0 = datetime.now(UTC).replace(tzinfo=None), time.perf_counter()
        if self.frozen(stage):
            if self.lineage is None:
                raise RuntimeError(f"{stage}: frozen without a lineage")
            self.artifacts[stage] = self.lineage.tokenizer
            self.catalog.record_stage(self.run_id, self.domain.name, self.lineage.tokenizer,
                                      cache_hit=True, started_at=started, duration_s=0.0)
            log.info("%s: the lineage's own %s (frozen)", stage, p.key)
            return {"stage": stage, "key": p.key, "cache_hit": True, "duration_s": 0.0,
                    "path": str(self.lineage.tokenizer.path)}
        try:
            inputs = self.inputs(stage, build_missing=build_missing)
            art, hit = self.store.build(
                stage=stage, key=p.key, config_hash=p.config_hash, code=p.code, inputs=inputs,
                fn=lambda out: STAGE_SPECS[stage].fn()(p.config, inputs, out, **extra), force=force,
                resume=STAGE_SPECS[stage].resumable)
        except Exception as exc:
            self.catalog.record_stage_failure(self.run_id, stage, p.key, started, repr(exc))
            notes = "".join(f"\n{n}" for n in getattr(exc, "__notes__", []))
            error = NotPromoted if isinstance(exc, GateFailure) else StageError
            raise error(
                f"stage {stage} failed (artifact {stage}/{p.key}): {exc}{notes}") from exc
        duration = time.perf_counter() - t0
        self.artifacts[stage] = art
        self.catalog.record_stage(self.run_id, self.domain.name, art, cache_hit=hit,
                                  started_at=started, duration_s=duration)
        log.info("%s: %s %s (%.1fs)", stage, "cached" if hit else "built", p.key, duration)
        return {"stage": stage, "key": p.key, "cache_hit": hit, "duration_s": duration,
                "path": str(art.path)}

    def record_cached(self, stage: str) -> dict[str, Any]:
        """Record a stage Prefect served from its cache (the artifact exists: see the flow)."""
        return self.run_stage(stage, build_missing=False)

    def run_all(self, only: str | None = None, from_stage: str | None = None,
                force: bool = False) -> Path | None:
        stages, rebuild = select(only, from_stage)
        if not (only or from_stage or force) and (idle := self.up_to_date()):
            self.finish_idle(idle)
            return None
        try:
            for stage in stages:
                self.run_stage(stage, force=force or stage in rebuild, build_missing=not only,
                               redo_shards=force)
                if stage == "ingest" and not only and (idle := self.empty_drop()):
                    self.finish_idle(idle)
                    return None
        except NotPromoted as exc:
            self.reject(exc)
            raise
        return self.finish()

    def finish(self) -> Path | None:
        """Write ``runs/<run_id>/report.{md,html}`` (when evaluate ran) and close the run."""
        with self.catalog.held():  # a handful of quick queries: one connection
            return self._finish()

    def _finish(self) -> Path | None:
        report_path = None
        if any(r["stage"] == "evaluate" for r in self.catalog.stage_runs(self.run_id)):
            origin = f"Domain from {self.domain.origin}" + (
                f" (`{self.domain.path}`)." if self.domain.path else ".")
            run = {"run_id": self.run_id, "domain": self.domain.name,
                   "profile": self.run.profile}
            report_path = ops.write_run_report(self.store, self.catalog, run,
                                               self.workdir / "runs" / self.run_id,
                                               [("p", origin)], pii=self.run.ingest.pii)
        evaluated = [r for r in self.catalog.stage_runs(self.run_id)
                     if r["stage"] == "evaluate" and r["status"] == "completed"]
        if evaluated:  # passed its gates (a failing gate raises NotPromoted: see reject)
            self.decision = promotion.decide(self.catalog, self.domain.name,
                                             self.plan["pretrain"].key, self.run_id, [])
            log.info("%s", self.decision.message)
        self.catalog.finish_run(self.run_id, "completed",
                                error=None if self.decision is None or self.decision.promoted
                                else self.decision.message,
                                report_path=str(report_path) if report_path else None)
        return report_path

    def reject(self, exc: NotPromoted) -> Path:
        """Close a run whose model failed evaluate's gates: the domain's promoted model stays,
        the candidate is recorded as rejected, the run's status is ``not promoted``."""
        found = promotion.failed_evaluation(self.store, self.plan["evaluate"].key)
        failures = ([promotion.gate_text(g) for g in promotion.failed_gates(found)]
                    or [str(exc.__cause__ or exc)])
        self.decision = promotion.decide(self.catalog, self.domain.name,
                                         self.plan["pretrain"].key, self.run_id, failures)
        log.warning("%s", self.decision.message)
        run = {"run_id": self.run_id, "domain": self.domain.name, "profile": self.run.profile}
        detail = (f"\n\nThe evaluation report of the candidate: {found / 'report.md'}"
                  if found and (found / "report.md").exists() else "")
        report_path = ops.write_failure_report(self.catalog, run,
                                               self.workdir / "runs" / self.run_id,
                                               self.decision.message + detail,
                                               not_promoted=True)
        self.catalog.finish_run(self.run_id, "not promoted", error=self.decision.message,
                                report_path=str(report_path))
        return report_path

    def finish_idle(self, message: str) -> None:
        """Close a continued run that had nothing new to train on (``up_to_date``)."""
        self.decision = promotion.Decision(True, message)
        log.info("%s", message)
        self.catalog.finish_run(self.run_id, "up to date", error=message)

    def fail(self, exc: BaseException) -> Path:
        """Close the run as failed; its report names the stage that failed and the error."""
        error = f"{type(exc).__name__}: {exc}"
        run = {"run_id": self.run_id, "domain": self.domain.name, "profile": self.run.profile}
        report_path = ops.write_failure_report(self.catalog, run,
                                               self.workdir / "runs" / self.run_id, error)
        self.catalog.finish_run(self.run_id, "failed", error=error, report_path=str(report_path))
        return report_path
