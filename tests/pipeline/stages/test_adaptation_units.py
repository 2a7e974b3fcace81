"""The pieces of the CPU adaptation path on literal values: the checkpoint rule, the worker's
event records, the dev/test split of the held-out slice, paired bootstrap changes, the sweep's
Pareto pick, and the settings' errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import DomainSpec, PretrainConfig, SweepConfig
from pipeline.lifecycle import report
from pipeline.lifecycle.sweep import pareto, pick
from pipeline.stages.evaluate.stage import bootstrap_weights, paired_change, slice_scores
from pipeline.stages.ingest.artifact import DEV_SHARE, dev_mask, split_dev_test
from pipeline.stages.pretrain.reference import not_comparable
from pipeline.stages.pretrain.worker_io import Candidate, Reference, WorkerEvent, choose

MODEL = {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128}


def test_checkpoint_rule_takes_best_domain_loss_within_the_general_limit() -> None:
    cands = [Candidate(step=0, eval_loss=4.0, general_loss=3.0),
             Candidate(step=10, eval_loss=3.6, general_loss=3.03),   # +1%: ok
             Candidate(step=20, eval_loss=3.4, general_loss=3.12),   # +4%: over 3%
             Candidate(step=30, eval_loss=3.5, general_loss=3.06)]   # +2%: ok, best within
    sel = choose(cands, 0.03)
    assert sel.chosen_step == 30 and sel.within_limit
    by_step = {c.step: c for c in sel.candidates}
    assert by_step[20].within_limit is False
    assert by_step[30].domain_change == pytest.approx(3.5 / 4.0 - 1)
    assert by_step[30].general_change == pytest.approx(0.02)
    # nothing within the limit: the smallest general rise, flagged
    sel = choose([cands[0], cands[2]], 0.01)
    assert sel.chosen_step == 20 and not sel.within_limit
    with pytest.raises(ValueError, match="no trained eval point"):
        choose([cands[0]], 0.03)


def test_checkpoint_rule_measures_the_general_limit_from_the_control() -> None:
    """The control's general dev loss (3.2) is above the base's (3.0): a point within 3% of the
    base but 4% above the control is not chosen; domain changes stay vs the base (step 0)."""
    cands = [Candidate(step=0, eval_loss=4.0, general_loss=3.0),
             Candidate(step=10, eval_loss=3.6, general_loss=3.20),   # base +6.7%, control 0%
             Candidate(step=20, eval_loss=3.4, general_loss=3.328),  # control +4%: over
             Candidate(step=30, eval_loss=3.5, general_loss=3.264)]  # control +2%: best within
    ref = Reference(kind="control", control_key="c0ffee", general_loss=3.2, sequences=8)
    sel = choose(cands, 0.03, ref)
    assert sel.chosen_step == 30 and sel.within_limit
    assert (sel.reference, sel.control_key, sel.control_general_loss) == ("control", "c0ffee", 3.2)
    assert "control model's" in sel.rule
    by_step = {c.step: c for c in sel.candidates}
    assert by_step[20].general_change_vs_control == pytest.approx(0.04)
    assert not by_step[20].within_limit and by_step[10].within_limit
    assert by_step[30].domain_change == pytest.approx(3.5 / 4.0 - 1)
    assert by_step[30].general_change == pytest.approx(3.264 / 3.0 - 1)  # vs base, for curves
    # within 3% of the base but over vs the control: not chosen
    close = [Candidate(step=0, eval_loss=4.0, general_loss=3.0),
             Candidate(step=10, eval_loss=3.9, general_loss=2.98),   # control +0.7%
             Candidate(step=20, eval_loss=3.3, general_loss=3.05)]   # base +1.7%, control +3.0%
    assert choose(close, 0.03).chosen_step == 20
    assert choose(close, 0.03, Reference(kind="control", general_loss=2.96)).chosen_step == 10
    # nothing within vs the control: the least rise over it, flagged
    sel = choose([cands[0], cands[2], cands[3]], 0.01, ref)
    assert sel.chosen_step == 30 and not sel.within_limit
    # a base reference (the control could not score the tokens): today's rule, with the reason
    why = not_comparable("extended", general_eval=True)
    assert why and "extended tokenizer" in why
    base = choose(cands, 0.03, Reference(kind="base", control_key="c0ffee", note=why))
    # (every trained point is over 3% above the base's 3.0: the least rise, flagged)
    assert (base.chosen_step, base.reference, base.reference_note) == (10, "base", why)
    assert not base.within_limit
    assert base.rule == choose(cands, 0.03).rule and base.control_general_loss is None
    # the report names the reference and shows the change vs the control
    text = report.to_markdown(report.selection_blocks({"selection": sel.model_dump()}))
    assert "Reference: the control (control/`c0ffee`), general dev loss 3.2000" in text
    assert "general vs control" in text and "+4.00%" in text
    text = report.to_markdown(report.selection_blocks({"selection": base.model_dump()}))
    assert "Reference: the base model (step 0) (this run trains with the extended" in text
    assert "general vs control" not in text
    assert "no general dev text" in (not_comparable("base", general_eval=False) or "")
    assert not_comparable("base", general_eval=True) is None
    # the sweep asks the same rule, in its own words
    assert "grid points trained with the own tokenizer" in (
        not_comparable("own", general_eval=True, of="sweep") or "")
    assert "grid points scored no general dev text" in (
        not_comparable("base", general_eval=False, of="sweep") or "")
    assert not_comparable("base", general_eval=True, of="sweep") is None


def test_worker_events_round_trip_and_other_lines_are_ignored() -> None:
    event = WorkerEvent(kind="step", step=3, max_steps=10, loss=2.5, lr=1e-4, tokens_per_s=120.0)
    assert WorkerEvent.parse("noise " + event.line() + "\n") == event
    assert WorkerEvent.parse("[2026-12-01] some DeepSpeed log line") is None
    assert "step 3/10 loss 2.5000 lr 1.00e-04 120 tok/s" in event.describe()
    with pytest.raises(ValueError):
        WorkerEvent.parse('[dapt-event] {"kind": "step"}')  # missing fields: rejected


def test_dev_and_test_parts_are_disjoint_stable_and_about_dev_share() -> None:
    ids = pa.array([f"src:{i}" for i in range(20_000)])
    mask = dev_mask(ids).to_numpy(zero_copy_only=False)
    assert abs(mask.mean() - DEV_SHARE) < 0.02
    assert (mask == dev_mask(ids).to_numpy(zero_copy_only=False)).all()
    table = pa.table({"doc_id": ids, "text": [str(i) for i in range(20_000)]})
    parts = split_dev_test(table)
    assert parts["dev"].num_rows + parts["test"].num_rows == 20_000
    assert not set(parts["dev"]["doc_id"].to_pylist()) & set(parts["test"]["doc_id"].to_pylist())
    # a document's part does not depend on what else is held out
    small = split_dev_test(table.slice(0, 500))
    assert set(small["dev"]["doc_id"].to_pylist()) <= set(parts["dev"]["doc_id"].to_pylist())


def test_paired_change_and_its_bootstrap_error() -> None:
    adapted = [(9.0, 3), (18.0, 6), (27.0, 9)]
    base = [(10.0, 3), (20.0, 6), (30.0, 9)]
    idx = np.arange(3)
    change, se = paired_change(adapted, base, idx, bootstrap_weights(np.arange(3), 200))
    assert change == pytest.approx(-0.1)
    assert se == pytest.approx(0.0, abs=1e-12)  # every document changed by exactly -10%
    noisy = [(9.0, 3), (22.0, 6), (27.0, 9)]
    _, se = paired_change(noisy, base, idx, bootstrap_weights(np.arange(3), 500))
    assert se > 0.01
    change, se = paired_change(adapted, base, idx, None)
    assert se is None


def test_the_bootstrap_draws_clusters_and_their_documents_move_together() -> None:
    """A held-out group is drawn whole: on 10 groups of 6 alike documents (each group's change
    its own), the standard error over groups is about sqrt(6) times the one a bootstrap over
    single documents gives, which would understate it; one group per document is that
    document bootstrap."""
    groups = np.repeat(np.arange(10), 6)
    weights = bootstrap_weights(np.array([f"icd:{g}" for g in groups]), 2000)
    assert weights.shape == (2000, 60)
    counts = weights[:, ::6]  # one column per group
    assert (weights == np.repeat(counts, 6, axis=1)).all()  # a group's documents move together
    assert (counts.sum(1) == 10).all()  # each replicate draws as many groups as there are
    rng = np.random.default_rng(1)
    ratio = np.repeat(rng.normal(0.9, 0.05, 10), 6)  # each group's change, shared by its docs
    base = [(10.0, 3)] * 60
    adapted = [(10.0 * r, 3) for r in ratio]
    idx = np.arange(60)
    change, se_groups = paired_change(adapted, base, idx, weights)
    _, se_docs = paired_change(adapted, base, idx, bootstrap_weights(idx, 2000))
    assert change == pytest.approx(ratio.mean() - 1)
    assert 1.8 < se_groups / se_docs < 3.2  # sqrt(6) = 2.45
    single = bootstrap_weights(np.arange(5), 300)
    assert single.sum(1).tolist() == [5.0] * 300 and set(np.unique(single)) <= set(range(6))


def test_slice_scores_per_slice_source_and_standard_error() -> None:
    texts = ["ab", "abcd", "xy"]  # 2, 4 and 2 bytes
    scores = [(np.log(2) * 2, 1), (np.log(2) * 4, 2), (np.log(2) * 6, 1)]
    draws = {"domain": bootstrap_weights(np.arange(2), 100),
             "general": bootstrap_weights(np.arange(1), 100)}
    out = slice_scores(scores, texts, ["a", "b", "g"], [False, False, True], draws)
    assert out["domain"]["bits_per_byte"] == pytest.approx(1.0)
    assert out["general"]["bits_per_byte"] == pytest.approx(3.0)
    assert out["source:b"]["tokens"] == 2 and out["domain"]["docs"] == 2
    assert out["domain"]["bits_per_byte_se"] == pytest.approx(0.0, abs=1e-12)


def test_sweep_pareto_and_pick() -> None:
    points = [{"lr": 1e-5, "replay": 0.0, "domain_change": -0.05, "general_change": -0.01},
              {"lr": 1e-4, "replay": 0.0, "domain_change": -0.20, "general_change": 0.05},
              {"lr": 1e-4, "replay": 0.2, "domain_change": -0.15, "general_change": 0.01},
              {"lr": 1e-5, "replay": 0.2, "domain_change": -0.04, "general_change": 0.00}]
    assert pareto(points) == [True, True, True, False]
    assert pick(points, 0.03)["lr"] == 1e-4 and pick(points, 0.03)["replay"] == 0.2
    assert pick(points, -0.02) is points[0]  # none within: the least general rise


@pytest.mark.parametrize(("grid", "message"), [
    ({"lrs": []}, "sweep.lrs is empty"),
    ({"replay": []}, "sweep.replay is empty"),
    ({"lrs": [1e-4, 0.0]}, r"sweep.lrs\[1\] is 0: a learning rate must be > 0"),
    ({"lrs": [-1e-4]}, r"sweep.lrs\[0\]"),
    ({"replay": [0.1, 1.0]}, r"sweep.replay\[1\] is 1: a replay share must be in \[0, 1\)"),
    ({"replay": [-0.1]}, r"sweep.replay\[0\]"),
])
def test_sweep_grid_errors_name_the_setting(grid: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SweepConfig.model_validate(grid)


def test_pretrain_settings_that_need_continue_mode() -> None:
    base = {"model": MODEL, "seq_len": 16, "micro_batch_size": 1, "max_steps": 4, "lr": 1e-3}
    with pytest.raises(ValueError, match="select_checkpoint needs pretrain.mode: continue"):
        PretrainConfig(**base, select_checkpoint=True, eval_every=2, log_every=1)
    with pytest.raises(ValueError, match="eval_every > 0"):
        PretrainConfig(**base, mode="continue", select_checkpoint=True)
    with pytest.raises(ValueError, match="pretrain.control: a control run continues"):
        PretrainConfig(**base, control=True)
    assert PretrainConfig(**base, mixture={"general": 0.0}).mixture == {"general": 0.0}


def test_control_needs_a_general_source() -> None:
    from pipeline.stages.control.spec import enabled as uses_control

    spec = DomainSpec(name="d", ingest={"sources": [{"name": "a", "path": "a.jsonl"}]},
                      finetune={"task": {"name": "t", "path": "t.jsonl"}})
    run = spec.resolve("cpu")
    assert run.pretrain.control and not uses_control(run)
    general = {"name": "g", "path": "g.jsonl", "general": True}
    spec = DomainSpec(name="d", ingest={"sources": [{"name": "a", "path": "a.jsonl"}, general]},
                      finetune={"task": {"name": "t", "path": "t.jsonl"}})
    assert uses_control(spec.resolve("cpu"))
    assert "control" not in spec.resolve("cpu").pretrain.model_dump()["mixture"]


def test_every_domain_of_the_cpu_profile_plans_one_shared_control(samples_dir: Path) -> None:
    """The control continues the base on general text only, so medical and finance (the same
    recipe and general corpus) plan the same control artifact; its key still follows the
    recipe (``pipeline.stages.control.key``)."""
    from pipeline import domains
    from pipeline.driver import plan

    keys = {}
    for name in ("medical", "finance"):
        d = domains.get(name)
        planned = plan(d, d.resolve("cpu"), samples_dir.parent)
        keys[name] = planned["evaluate"].inputs["control"]
    assert keys["medical"] == keys["finance"]
    d = domains.get("medical")
    run = d.resolve("cpu")
    other = run.model_copy(update={"pretrain": run.pretrain.model_copy(update={"lr": 1e-5})})
    assert plan(d, other, samples_dir.parent)["evaluate"].inputs["control"] != keys["medical"]
