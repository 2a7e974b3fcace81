"""Zero-shot over training seeds (pipeline/stages/evaluate/zeroshot_seeds.py): the two-level
interval on hand-made differences, and two seeds of tiny models on the real organ-system task:
seed 0 answered from the memo, seed 1 scored and written, each seed's gain by hand from the
written log-likelihoods, the report's table and the verdict's words."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.config import EvaluateConfig
from pipeline.stages.evaluate import zeroshot, zeroshot_rules, zeroshot_seeds
from pipeline.stages.evaluate.memo import Memo
from tests.pipeline.stages.test_zeroshot import _tiny_model, scored  # noqa: F401 (fixture)

CONFIG = EvaluateConfig(zeroshot_max_examples=40, zeroshot_max_chars=200, bootstrap_samples=300)


def test_the_interval_covers_the_seeds_and_the_examples() -> None:
    # examples that agree, seeds that differ: seed 0 wins every example, seed 1 ties every
    # one; the replicates are the means of 2 seeds drawn with replacement: 1, 0.5 or 0
    diffs = [np.stack([np.ones(200), np.zeros(200)])]
    assert zeroshot_seeds.two_level_interval(diffs, 2000) == (0.0, 1.0)
    # seeds that agree: the examples' paired interval alone, as zeroshot.gain_interval's
    one = (np.arange(400) % 3 == 0).astype(float)
    low, high = zeroshot_seeds.two_level_interval([np.stack([one, one])], 4000)
    _, ref_low, ref_high = zeroshot.gain_interval([one], [np.zeros(400)], 4000)
    assert low == pytest.approx(ref_low, abs=0.01) and high == pytest.approx(ref_high, abs=0.01)
    # two tasks are averaged: a task of constant +1 beside one of constant 0 gives exactly 0.5
    flat = [np.ones((3, 50)), np.zeros((3, 80))]
    assert zeroshot_seeds.two_level_interval(flat, 500) == (0.5, 0.5)


@pytest.fixture(scope="module")
def two_seeds(scored: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: F811
    """Seed 1 of both arms: two more tiny models on the same texts, other initialisations."""
    root = tmp_path_factory.mktemp("zs_seeds")
    texts = [json.loads(x)["text"] for x in
             (scored["ft"].artifact.path.parent / "organ.jsonl").read_text().splitlines()]
    return {"adapted": [scored["adapted"], _tiny_model(root / "a1" / "hf", texts, 2)],
            "control": [scored["control"], _tiny_model(root / "c1" / "hf", texts, 3)]}


def test_every_seed_is_judged_under_the_first_seeds_rule(
        scored: dict, two_seeds: dict, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    memo = Memo(tmp_path / "evaluate" / "build")
    memo.out_dir.mkdir(parents=True)
    first = {arm: dirs[0] for arm, dirs in two_seeds.items()}
    metrics, _ = zeroshot.evaluate(CONFIG, scored["ft"], first, memo.out_dir, memo)
    rule = zeroshot_rules.rule_of(metrics)
    scoring = zeroshot._score_model
    seen: list[Path] = []
    monkeypatch.setattr(zeroshot, "_score_model",
                        lambda path, *a, **k: seen.append(path) or scoring(path, *a, **k))
    m, table = zeroshot_seeds.over_seeds(CONFIG, scored["ft"], two_seeds, rule, [5, 6],
                                         memo.out_dir, memo)
    # seed 0 came from the memo: only seed 1's models were scored
    assert seen == [two_seeds["adapted"][1], two_seeds["control"][1]]
    assert m["zeroshot_gain_vs_control_seed0"] == pytest.approx(
        metrics["zeroshot_gain_vs_control"])
    # seed 1's gain by hand from the log-likelihoods it wrote, under the same rule
    rows = [json.loads(x) for x in
            (memo.out_dir / "zeroshot_seed_scores.jsonl").read_text().splitlines()]
    assert sorted({r["model"] for r in rows}) == ["adapted[seed1]", "control[seed1]"]
    task = zeroshot.tasks_of(scored["ft"], CONFIG)[0]
    acc = {}
    for model in ("adapted", "control"):
        ll = np.array([r["loglikelihoods"] for r in rows if r["model"] == f"{model}[seed1]"])
        assert [r["id"] for r in rows if r["model"] == f"{model}[seed1]"] == list(task.ids)
        unconditional = None
        if rule == "acc_mutual_info":
            unconditional = zeroshot._score_model(two_seeds[model][1], [task], [], 8, model,
                                                  torch.device("cpu")).unconditional[task.name]
        acc[model] = zeroshot.judge(ll, task, unconditional)[rule].mean()
    gain1 = acc["adapted"] - acc["control"]
    assert m["zeroshot_gain_vs_control_seed1"] == pytest.approx(gain1)
    assert m["zeroshot_gain_vs_control_seed_mean"] == pytest.approx(
        (metrics["zeroshot_gain_vs_control"] + gain1) / 2)
    assert m["zeroshot_gain_vs_control_seed_ci_low"] <= m["zeroshot_gain_vs_control_seed_mean"] \
        <= m["zeroshot_gain_vs_control_seed_ci_high"]
    assert [r["seed"] for r in table["rows"]] == [5, 6] and table["rule"] == rule
    assert table["rows"][1]["adapted"] == pytest.approx(acc["adapted"])
    # one seed, or no control: nothing over seeds
    assert zeroshot_seeds.over_seeds(CONFIG, scored["ft"], {"adapted": two_seeds["adapted"]},
                                     rule, [5, 6], memo.out_dir, memo) == ({}, None)
    _words_and_report(m, table, metrics)


def _words_and_report(m: dict, table: dict, first: dict) -> None:
    from pipeline.lifecycle.report import to_markdown, zeroshot_blocks

    both = {**first, **m, "train_seeds": 2.0}
    words = zeroshot_seeds.verdict_text(both)
    assert words == (f"zero-shot over 2 seeds: {m['zeroshot_gain_vs_control_seed_mean']:+.3f}"
                     f" vs control (sd {m['zeroshot_gain_vs_control_seed_std']:.3f}, 95% CI "
                     f"over seeds and examples [{m['zeroshot_gain_vs_control_seed_ci_low']:+.3f}"
                     f", {m['zeroshot_gain_vs_control_seed_ci_high']:+.3f}]); the first seed's "
                     + zeroshot.verdict_text(first))
    # one seed: the first seed's words alone
    assert zeroshot_seeds.verdict_text(first) == zeroshot.verdict_text(first)
    details = {"rule": table["rule"], "lm_eval_dir": "lm_eval", "seeds": table, "tasks": [
        {"task": "organ_system", "examples": 40, "chance": 0.2, "models": {
            k: {table["rule"]: 0.3} for k in ("control", "adapted")}}]}
    text = to_markdown(zeroshot_blocks({"metrics": both, "zeroshot": details}))
    assert "### Zero-shot over training seeds (2)" in text
    assert "| seed | adapted | control | adapted - control |" in text
    row = table["rows"][1]
    assert (f"| 6 | {row['adapted']:.3f} | {row['control']:.3f} | {row['gain']:+.3f} |"
            in text)


def test_the_stage_adds_the_seeds_to_its_zero_shot_metrics(
        scored: dict, two_seeds: dict, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages.evaluate import seeds, stage

    by_seed = {arm: [SimpleNamespace(hf_dir=d, spec=SimpleNamespace(
        config=SimpleNamespace(seed=40 + i))) for i, d in enumerate(dirs)]
        for arm, dirs in two_seeds.items()}
    monkeypatch.setattr(seeds, "seed_models", lambda artifacts: by_seed)
    given = SimpleNamespace(finetune=scored["ft"], artifacts={}, model_dirs=lambda: {
        arm: dirs[0] for arm, dirs in two_seeds.items()})
    memo = Memo(tmp_path / "build")
    metrics, details = stage.zero_shot(CONFIG, given, memo.out_dir, memo)
    alone, _ = zeroshot.evaluate(CONFIG, scored["ft"], given.model_dirs(), tmp_path, memo)
    assert {k: v for k, v in metrics.items() if k in alone} == alone
    assert metrics["zeroshot_gain_vs_control_seed0"] == pytest.approx(
        alone["zeroshot_gain_vs_control"])
    assert [r["seed"] for r in details["seeds"]["rows"]] == [40, 41]
    assert details["tasks"][0]["task"] == "organ_system"
