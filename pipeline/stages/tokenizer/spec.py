"""The tokenizer step: trained on the ingest shards (or the base model's extended). A run that
continues a lineage reuses the lineage's own tokenizer as it is (frozen: never rebuilt)."""

from __future__ import annotations

from pipeline.engine.plan import PlanContext, Prepared, StepSpec


def prepare(ctx: PlanContext) -> Prepared:
    config = ctx.run.tokenizer
    reuse = ctx.lineage.tokenizer if ctx.lineage is not None else None
    return Prepared(config, config.model_dump(mode="json"), reuse=reuse)


SPEC = StepSpec(name="tokenizer", module="pipeline.stages.tokenizer.stage",
                title="train the domain tokenizer, or extend the base model's",
                prepare=prepare,
                needs=lambda run: ("ingest",) + (("models",) if run.pretrain.mode == "continue"
                                                 else ()))
