"""The ingest step's spec: its key hashes every source file's content and the test sets it
decontaminates against; a domain's ingest is the next drop of its lineage (same domain, ingest
config and code), whose previous drop is an input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import domains as domain_registry
from pipeline.config import EvalSetConfig, RunConfig
from pipeline.engine.artifacts import (
    Artifact,
    ArtifactStore,
    artifact_key,
    file_digest,
    stable_hash,
)
from pipeline.engine.plan import Plan, PlanContext, PlannedStep, Prepared, StepSpec
from pipeline.stages.ingest import drops


def eval_sets(run: RunConfig, files: dict[str, list[Path]], inputs: dict[str, Any]
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
        inputs[f"test_set:{s.name}"] = [file_digest(Path(s.path)), s.test_fraction,
                                        s.split_seed, s.max_rows]
    return sets


def previous_drop(store: ArtifactStore, lineage: str, config_json: dict[str, Any], code: str,
                  inputs: dict[str, Any]) -> None:
    """Ingest is the next drop of its lineage: its input ``ingest`` is the lineage's newest
    drop, unless that drop was built from exactly these inputs (then this run is that drop
    again: a cache hit, or a rebuild of the same key)."""
    head = drops.head(store, lineage)
    if head is None:
        return
    before = head.manifest.inputs.get("ingest")
    same = {**inputs, **({"ingest": before} if before else {})}
    if artifact_key(config_json, code, same) == head.key:
        inputs.update(same)
    else:
        inputs["ingest"] = head.key


def prepare(ctx: PlanContext) -> Prepared:
    config = ctx.run.ingest
    inputs: dict[str, Any] = {}
    sources, digests = [], {}
    for i, source in enumerate(config.sources):
        paths = ctx.files[f"ingest.sources[{i}].path"]
        inputs[f"source:{source.name}"] = [domain_registry.source_digest(p, ctx.digests)
                                           for p in paths]
        digests.update(zip(map(str, paths), inputs[f"source:{source.name}"], strict=True))
        sources.append(source.model_copy(update={
            "path": domain_registry.resolve_path(source.path, ctx.domain, ctx.workdir)}))
    resolved = config.model_copy(update={"sources": sources, "decontamination": (
        config.decontamination.model_copy(update={
            "test_sets": eval_sets(ctx.run, ctx.files, inputs)}))})
    hashed = config.model_dump(mode="json")
    code = SPEC.code_version()
    # test sets are not the corpus: new ones apply from the next drop on
    lineage = stable_hash({"domain": ctx.domain.name, "code": code, "config": {
        k: v for k, v in hashed.items() if k != "decontamination"}})
    previous_drop(ctx.store, lineage, hashed, code, inputs)
    artifacts = {"ingest": ("ingest", inputs["ingest"])} if "ingest" in inputs else {}
    return Prepared(resolved, hashed, inputs, artifacts,
                    data={"lineage": lineage, "digests": digests})


def options(step: PlannedStep, store: ArtifactStore, redo: bool) -> dict[str, Any]:
    return {"drops": drops.Drops(store=store, digests=step.prepared.data["digests"],
                                 lineage=step.prepared.data["lineage"], redo_shards=redo)}


def up_to_date(ctx: PlanContext, plan: Plan) -> str | None:
    """Why a continued run has nothing to do: the promoted model already trained on this
    corpus (same ingest key: no new drop). None when there is work."""
    if ctx.lineage is None or ctx.lineage.ingest_key != plan["ingest"].key:
        return None
    return (f"up to date: the promoted model pretrain/{ctx.lineage.model.key} already "
            f"trained on this corpus (ingest/{plan['ingest'].key}); no new data")


def stops(ctx: PlanContext, art: Artifact) -> str | None:
    """After ingest: why a continued run stops there, when the new drop kept no training
    document (every new one excluded, or no new file); None when there is work."""
    if ctx.lineage is None or "drop" not in art.manifest.extra:
        return None
    c = art.manifest.counts
    if c.get("train_docs", 0) > 0:
        return None
    why = ", ".join(f"{k.removeprefix('excluded_')} {v}" for k, v in sorted(c.items())
                    if k.startswith("excluded_") and v) or "no new documents"
    return (f"up to date: drop {c.get('drop')} (ingest/{art.key}) adds no training "
            f"documents ({c.get('docs_in', 0)} in; excluded: {why}); the promoted model "
            f"pretrain/{ctx.lineage.model.key} stays")


SPEC = StepSpec(name="ingest", module="pipeline.stages.ingest",
                title="read, clean, filter, dedup and split the domain's sources",
                prepare=prepare, parallel=True, options=options, up_to_date=up_to_date,
                stops=stops)
