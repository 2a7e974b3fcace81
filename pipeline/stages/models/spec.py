"""The base model step: in continue mode, the registered model (or a local HF directory) is
converted once into an artifact keyed by its files' content; every domain shares it."""

from __future__ import annotations

from pipeline.engine.plan import PlanContext, Prepared, StepSpec
from pipeline.stages.models import stage as models


def prepare(ctx: PlanContext) -> Prepared:
    name = ctx.run.pretrain.base_model
    digests = {p.name: ctx.digests(p) for p in models.weight_files(name)}
    return Prepared(name, models.hashed_config(name), digests, config_hash=name)


SPEC = StepSpec(name="models", module="pipeline.stages.models.stage",
                title="convert the base model once (shared by every domain)",
                prepare=prepare, enabled=lambda run: run.pretrain.mode == "continue",
                shared=True)
