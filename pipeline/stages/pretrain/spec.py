"""The pretrain step: pack the corpus and train (from scratch, or continued from the base model
or from the domain's promoted model, whose key is then an input: a new promotion never serves a
stale artifact)."""

from __future__ import annotations

from pipeline.engine.plan import PlanContext, Prepared, StepSpec

# Not hashed as config: what they change enters the key as inputs (the promoted model, the
# replay share) only when a lineage is continued, so init: promoted with nothing promoted yet
# shares its artifacts with init: base.
LINEAGE_FIELDS = {"init", "earlier_share"}


def prepare(ctx: PlanContext) -> Prepared:
    config = ctx.run.pretrain
    hashed = config.model_dump(mode="json", exclude=LINEAGE_FIELDS)
    if ctx.lineage is None:
        return Prepared(config, hashed)
    promoted = ctx.lineage.model.key
    return Prepared(config, hashed, {"promoted": promoted,
                                     "earlier_share": config.earlier_share},
                    {"promoted": ("pretrain", promoted)})


SPEC = StepSpec(name="pretrain", module="pipeline.stages.pretrain.stage",
                title="pack the corpus and train the causal LM with DeepSpeed",
                prepare=prepare, resumable=True, role="model",
                needs=lambda run: ("ingest", "tokenizer") + (
                    ("models",) if run.pretrain.mode == "continue" else ()))
