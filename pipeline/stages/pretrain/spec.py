"""The pretrain step: pack the corpus and train (from scratch, or continued from the base model
or from the domain's promoted model, whose key is then an input: a new promotion never serves a
stale artifact). With ``pretrain.seeds`` > 1 it fans out into one step per training seed:
``pretrain`` (the first seed, ``pretrain.seed``), ``pretrain[seed1]`` (seed + 1), ...

With ``select_checkpoint`` and a control step, each seed reads the control of its own seed
(``paired``: ``pretrain[seed1]`` reads ``control[seed1]``), whose key thus enters its own: the
checkpoint rule compares the general dev loss with that control's (``reference.py``)."""

from __future__ import annotations

from pipeline.config import PretrainConfig, RunConfig
from pipeline.engine.plan import PlanContext, Prepared, StepSpec, paired

# Not hashed as config: what they change enters the key as inputs (the promoted model, the
# replay share) only when a lineage is continued, so init: promoted with nothing promoted yet
# shares its artifacts with init: base.
LINEAGE_FIELDS = {"init", "earlier_share"}
# Not hashed: how many seeds is the plan's business; each variant's key hashes its own seed,
# so the first seed's artifact is the one a run with seeds: 1 builds (and reuses).
FAN_OUT_FIELDS = {"seeds"}
# Not hashed: which files the artifact keeps, not what any later step reads from it.
STORAGE_FIELDS = {"keep_final_checkpoint"}
UNHASHED = LINEAGE_FIELDS | FAN_OUT_FIELDS | STORAGE_FIELDS


def seed_configs(config: PretrainConfig) -> list[tuple[str | None, PretrainConfig]]:
    """(variant, config) per training seed: the first keeps variant None (the step named
    ``pretrain``), seed i is ``seed<i>`` with ``seed`` + i."""
    return [(None if i == 0 else f"seed{i}", config.model_copy(update={"seed": config.seed + i}))
            for i in range(config.seeds)]


def prepare(ctx: PlanContext) -> Prepared | list[Prepared]:
    out = []
    for variant, config in seed_configs(ctx.run.pretrain):
        hashed = config.model_dump(mode="json", exclude=UNHASHED)
        if ctx.lineage is None:
            out.append(Prepared(config, hashed, variant=variant))
            continue
        promoted = ctx.lineage.model.key
        out.append(Prepared(config, hashed, {"promoted": promoted,
                                             "earlier_share": config.earlier_share},
                            {"promoted": ("pretrain", promoted)}, variant=variant))
    return out if len(out) > 1 else out[0]


def compares_with_control(run: RunConfig) -> bool:
    """Whether the checkpoint choice reads the control (the run has one and chooses)."""
    from pipeline.stages.control.spec import enabled  # it imports this module

    return run.pretrain.select_checkpoint and enabled(run)


def needs(run: RunConfig) -> tuple[str, ...]:
    base = ("models",) if run.pretrain.mode == "continue" else ()
    control = (paired("control"),) if compares_with_control(run) else ()
    return ("ingest", "tokenizer") + base + control


SPEC = StepSpec(name="pretrain", module="pipeline.stages.pretrain.stage",
                title="pack the corpus and train the causal LM with DeepSpeed",
                prepare=prepare, resumable=True, role="model", needs=needs)
