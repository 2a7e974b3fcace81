"""The general step's spec: the general sources with the fixed policy of ``stage.policy``; its
key hashes their files' content, the policy and the code, never the domain, so every domain
with the same general sources and ingest seed shares one artifact."""

from __future__ import annotations

from typing import Any

from pipeline import domains as domain_registry
from pipeline.engine.plan import PlanContext, Prepared, StepSpec
from pipeline.stages.control.spec import enabled
from pipeline.stages.general import stage as general


def prepare(ctx: PlanContext) -> Prepared:
    inputs: dict[str, Any] = {}
    sources = []
    for i, source in enumerate(ctx.run.ingest.sources):
        if not source.general:
            continue
        paths = ctx.files[f"ingest.sources[{i}].path"]
        inputs[f"source:{source.name}"] = [domain_registry.source_digest(p, ctx.digests)
                                           for p in paths]
        sources.append(source.model_copy(update={
            "path": domain_registry.resolve_path(source.path, ctx.domain, ctx.workdir)}))
    config = general.policy(sources, ctx.run.ingest.seed)
    unresolved = general.policy([s for s in ctx.run.ingest.sources if s.general],
                                ctx.run.ingest.seed)
    # the sources as written (without their paths: the files' content is an input)
    hashed = unresolved.model_dump(mode="json", exclude={"sources": {"__all__": {"path"}}})
    return Prepared(config, hashed, inputs)


SPEC = StepSpec(name="general", module="pipeline.stages.general.stage",
                title="clean the general sources with one fixed ingest policy (shared)",
                prepare=prepare, enabled=enabled, shared=True, parallel=True)
