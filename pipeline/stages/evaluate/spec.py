"""The evaluate step: held-out bits/byte of the adapted model beside the base model, the
control and (for a continued lineage) the promoted model it would replace; the gates; the
report."""

from __future__ import annotations

from pipeline.config import RunConfig
from pipeline.engine.plan import PlanContext, Prepared, StepSpec


def prepare(ctx: PlanContext) -> Prepared:
    config = ctx.run.evaluate
    hashed = config.model_dump(mode="json")
    if ctx.lineage is None:
        return Prepared(config, hashed)
    previous = ctx.lineage.model.key
    return Prepared(config, hashed, {"previous": previous}, {"previous": ("pretrain", previous)})


def needs(run: RunConfig) -> tuple[str, ...]:
    """Every training seed's adapted model and control (``pretrain``, ``pretrain[seed1]``,
    ...; ``pipeline/stages/evaluate/seeds.py``)."""
    base = ("models",) if run.pretrain.mode == "continue" else ()
    return ("ingest", "tokenizer", "pretrain", "finetune") + base + ("control",)


SPEC = StepSpec(name="evaluate", module="pipeline.stages.evaluate.stage",
                title="score base, control and adapted models; gates; the report",
                prepare=prepare, needs=needs, role="verdict")
