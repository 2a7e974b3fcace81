"""The planner on toy specs: keys chain through needs, a spec fans out into one step per
variant (each keyed on its own), a step reads only the variants it needs, and selection follows
the graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.engine.artifacts import ArtifactStore, DigestCache
from pipeline.engine.plan import (
    PlanContext,
    Prepared,
    StepSpec,
    paired,
    plan_steps,
    select,
)


def _ctx(tmp_path: Path, run: dict) -> PlanContext:
    return PlanContext(domain=None, run=run, workdir=tmp_path,
                       store=ArtifactStore(tmp_path / "artifacts"), files={},
                       digests=DigestCache(None))


def _specs() -> list[StepSpec]:
    data = StepSpec(name="data", module="pipeline.metrics", title="data",
                    prepare=lambda ctx: Prepared(None, {"rows": ctx.run["rows"]}))
    train = StepSpec(name="train", module="pipeline.metrics", title="one model per seed",
                     needs=lambda run: ("data",),
                     prepare=lambda ctx: [Prepared(None, {"seed": s}, variant=f"seed{s}")
                                          for s in ctx.run["seeds"]])
    score = StepSpec(name="score", module="pipeline.metrics", title="all seeds",
                     needs=lambda run: ("data", "train"),
                     prepare=lambda ctx: Prepared(None, {}))
    extra = StepSpec(name="extra", module="pipeline.metrics", title="off here",
                     enabled=lambda run: False, prepare=lambda ctx: Prepared(None, {}))
    return [data, train, extra, score]


def test_a_spec_fans_out_one_step_per_variant(tmp_path: Path) -> None:
    plan = plan_steps(_specs(), _ctx(tmp_path, {"rows": 10, "seeds": [0, 1, 2]}))
    assert list(plan) == ["data", "train[seed0]", "train[seed1]", "train[seed2]", "score"]
    assert len({plan[f"train[seed{s}]"].key for s in range(3)}) == 3  # each keyed on its own
    assert plan["score"].needs == ("data", "train[seed0]", "train[seed1]", "train[seed2]")
    assert plan["score"].inputs == {n: plan[n].key for n in plan["score"].needs}
    assert all(plan[n].kind == "train" for n in plan if n.startswith("train["))
    # the keys chain: new data changes every step's key; one more seed changes only score's
    more = plan_steps(_specs(), _ctx(tmp_path, {"rows": 11, "seeds": [0, 1, 2]}))
    assert all(more[n].key != plan[n].key for n in plan)
    seeds = plan_steps(_specs(), _ctx(tmp_path, {"rows": 10, "seeds": [0, 1, 2, 3]}))
    assert [n for n in plan if seeds[n].key != plan[n].key] == ["score"]


def test_selection_follows_the_graph(tmp_path: Path) -> None:
    plan = plan_steps(_specs(), _ctx(tmp_path, {"rows": 10, "seeds": [0, 1]}))
    assert select(plan, from_step="train").rebuild == {"train[seed0]", "train[seed1]", "score"}
    assert select(plan, only="train[seed1]").steps == ["train[seed1]"]
    assert select(plan, upto="train[seed0]").steps == ["data", "train[seed0]"]
    with pytest.raises(ValueError, match="not a step of this run; allowed: data, train, score"):
        select(plan, only="extra")


def test_a_need_on_a_later_spec_moves_it_forward_and_paired_reads_the_same_variant(
        tmp_path: Path) -> None:
    """``train`` (listed first) reads the ``ref`` of its own seed: ``ref`` is planned first, each
    seed of ``train`` is keyed on its own seed's ``ref``; without the need, list order."""
    def seeds(ctx: PlanContext) -> list[Prepared]:
        return [Prepared(None, {"seed": s}, variant=None if s == 0 else f"seed{s}")
                for s in ctx.run["seeds"]]

    train = StepSpec(name="train", module="pipeline.metrics", title="reads its seed's ref",
                     needs=lambda run: (paired("ref"),) if run["ref"] else (), prepare=seeds)
    ref = StepSpec(name="ref", module="pipeline.metrics", title="one per seed", prepare=seeds)
    plan = plan_steps([train, ref], _ctx(tmp_path, {"seeds": [0, 1], "ref": True}))
    assert list(plan) == ["ref", "ref[seed1]", "train", "train[seed1]"]
    assert plan["train"].inputs == {"ref": plan["ref"].key}
    assert plan["train[seed1]"].inputs == {"ref[seed1]": plan["ref[seed1]"].key}
    alone = plan_steps([train, ref], _ctx(tmp_path, {"seeds": [0, 1], "ref": False}))
    assert list(alone) == ["train", "train[seed1]", "ref", "ref[seed1]"]
    assert alone["train"].inputs == {} and alone["train"].key != plan["train"].key
    # one ref for every seed: each seed reads it
    one = StepSpec(name="ref", module="pipeline.metrics", title="one",
                   prepare=lambda ctx: Prepared(None, {}))
    shared = plan_steps([train, one], _ctx(tmp_path, {"seeds": [0, 1], "ref": True}))
    assert shared["train[seed1]"].needs == ("ref",)
    loop = StepSpec(name="ref", module="pipeline.metrics", title="reads train",
                    needs=lambda run: ("train",), prepare=lambda ctx: Prepared(None, {}))
    with pytest.raises(ValueError, match="need each other"):
        plan_steps([train, loop], _ctx(tmp_path, {"seeds": [0], "ref": True}))
