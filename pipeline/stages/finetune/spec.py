"""The finetune step: each labelled task's classifier (or probe) for the adapted model, and in
continue mode for the base model (``compare_base``) and the control."""

from __future__ import annotations

from typing import Any

from pipeline.config import RunConfig
from pipeline.engine.artifacts import file_digest
from pipeline.engine.plan import PlanContext, Prepared, StepSpec, first


def prepare(ctx: PlanContext) -> Prepared:
    config = ctx.run.finetune
    inputs: dict[str, Any] = {}
    tasks = []
    for i, task in enumerate(config.tasks):
        path = ctx.files[f"finetune.tasks[{i}].path"][0]
        inputs[f"task:{task.name}"] = file_digest(path)
        tasks.append(task.model_copy(update={"path": str(path)}))
    return Prepared(config.model_copy(update={"tasks": tasks}), config.model_dump(mode="json"),
                    inputs)


def needs(run: RunConfig) -> tuple[str, ...]:
    """The first training seed's adapted model and control only (``pretrain.seeds``): the
    downstream tasks score the model that is promoted, and more seeds leave this key as it is."""
    base = run.pretrain.mode == "continue" and run.finetune.compare_base
    return (first("pretrain"),) + (("models",) if base else ()) + (first("control"),)


SPEC = StepSpec(name="finetune", module="pipeline.stages.finetune.stage",
                title="train or probe a classifier per labelled task",
                prepare=prepare, needs=needs)
