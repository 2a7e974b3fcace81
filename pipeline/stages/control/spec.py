"""The control step: the base model continued on general text only, with the adapted model's
recipe (``stage.py``). Its key is the recipe, the base model and the ``general`` step's
artifact (the general sources cleaned with one fixed policy), not the domain: every domain with
the same recipe shares one artifact. With ``pretrain.seeds`` > 1 it fans out like pretrain:
``control`` (the first seed), ``control[seed1]``, ... each with the seed of the adapted model
it is paired with."""

from __future__ import annotations

from pipeline.config import RunConfig
from pipeline.engine.plan import PlanContext, Prepared, StepSpec
from pipeline.stages.control import stage as control
from pipeline.stages.pretrain.spec import FAN_OUT_FIELDS, STORAGE_FIELDS, seed_configs


def enabled(run: RunConfig) -> bool:
    return (run.pretrain.mode == "continue" and run.pretrain.control
            and any(s.general for s in run.ingest.sources))


def prepare(ctx: PlanContext) -> Prepared | list[Prepared]:
    out = []
    for variant, config in seed_configs(ctx.run.pretrain):
        recipe = control.recipe(config)
        job = control.ControlJob(recipe, ctx.run.ingest.seed)
        hashed = recipe.model_dump(mode="json", exclude=FAN_OUT_FIELDS | STORAGE_FIELDS)
        out.append(Prepared(job, hashed,
                            {"hold_out": [control.HOLD_OUT, ctx.run.ingest.seed]},
                            variant=variant))
    return out if len(out) > 1 else out[0]


SPEC = StepSpec(name="control", module="pipeline.stages.control.stage",
                title="train the base model on general text only (shared by every domain)",
                prepare=prepare, needs=lambda run: ("models", "general"), enabled=enabled,
                shared=True, resumable=True)
