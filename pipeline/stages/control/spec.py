"""The control step: the base model continued on general text only, with the adapted model's
recipe (``stage.py``). Its key is the recipe, the base model, the general files and the
held-out rule, not the domain: every domain with the same recipe shares one artifact. With
``pretrain.seeds`` > 1 it fans out like pretrain: ``control`` (the first seed),
``control[seed1]``, ... each with the seed of the adapted model it is paired with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import RunConfig
from pipeline.engine.plan import PlanContext, Prepared, StepSpec
from pipeline.stages.control import stage as control
from pipeline.stages.pretrain.spec import FAN_OUT_FIELDS, seed_configs


def enabled(run: RunConfig) -> bool:
    return (run.pretrain.mode == "continue" and run.pretrain.control
            and any(s.general for s in run.ingest.sources))


def general_sources(run: RunConfig, files: dict[str, list[Path]]) -> list[tuple[Any, list[Path]]]:
    """The general sources with their resolved files (what the control trains on)."""
    return [(s, files[f"ingest.sources[{i}].path"]) for i, s in enumerate(run.ingest.sources)
            if s.general]


def prepare(ctx: PlanContext) -> Prepared | list[Prepared]:
    sources = general_sources(ctx.run, ctx.files)
    inputs = control.key_inputs(sources, ctx.run.ingest.seed, ctx.digests)
    out = []
    for variant, config in seed_configs(ctx.run.pretrain):
        recipe = control.recipe(config)
        job = control.ControlJob(recipe, sources, ctx.run.ingest.seed)
        out.append(Prepared(job, recipe.model_dump(mode="json", exclude=FAN_OUT_FIELDS),
                            inputs, variant=variant))
    return out if len(out) > 1 else out[0]


SPEC = StepSpec(name="control", module="pipeline.stages.control.stage",
                title="train the base model on general text only (shared by every domain)",
                prepare=prepare, needs=lambda run: ("models",), enabled=enabled, shared=True,
                resumable=True)
