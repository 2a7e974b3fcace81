"""Training seeds (``pretrain.seeds``): the plan fans pretrain and the control out into one step
per seed (the first keeps today's key), finetune reads the first seed only, evaluate every seed;
the two-level bootstrap interval on hand-made per-document scores; ``--seeds`` on the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipeline import domains as domain_registry
from pipeline.config import EvaluateConfig, PretrainConfig
from pipeline.driver import plan
from pipeline.engine.artifacts import artifact_key, stable_hash
from pipeline.lifecycle import report, tracking
from pipeline.stages.evaluate import seeds
from pipeline.stages.evaluate.verdict import headline
from pipeline.stages.pretrain.spec import LINEAGE_FIELDS, STORAGE_FIELDS
from tests.e2e_domain import write_test_domain

CONTROL = ["pretrain.mode=continue", "pretrain.control=true"]


@pytest.fixture(scope="module")
def domain(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_domain(samples_dir, tmp_path_factory.mktemp("seeds"))


def _plan(domain: Path, work: Path, *sets: str):
    d = domain_registry.select(None, domain)
    run = d.resolve("tiny", [*CONTROL, *sets])
    return run, plan(d, run, work)


def test_seeds_fan_out_pretrain_and_control_and_keep_the_first_key(domain: Path,
                                                                   tmp_path: Path) -> None:
    run, one = _plan(domain, tmp_path)
    _, two = _plan(domain, tmp_path, "pretrain.seeds=2")
    assert list(two) == ["ingest", "models", "tokenizer", "pretrain", "pretrain[seed1]",
                         "general", "control", "control[seed1]", "finetune", "evaluate"]
    # seeds: 1 hashes the config as it was before the field existed (no `seeds` in it), nor
    # what only decides which files an artifact keeps
    unhashed = LINEAGE_FIELDS | {"seeds"} | STORAGE_FIELDS
    today = run.pretrain.model_dump(mode="json", exclude=unhashed)
    assert set(today) == set(PretrainConfig.model_fields) - unhashed
    step = one["pretrain"]
    assert step.prepared.hashed == today and step.config_hash == stable_hash(today)
    assert step.key == artifact_key(today, step.code, step.inputs)
    assert not {"seeds", "keep_final_checkpoint"} & set(one["control"].prepared.hashed)
    # the first seed is the step a run with one seed has: same key, reused as it is
    for name in ("pretrain", "control", "finetune"):
        assert two[name].key == one[name].key, name
    assert two["evaluate"].key != one["evaluate"].key
    # seed 1: its own seed, its own key, in both arms
    assert two["pretrain[seed1]"].config.seed == run.pretrain.seed + 1
    assert two["control[seed1]"].config.pretrain.seed == run.pretrain.seed + 1
    assert len({two[n].key for n in two}) == len(two)
    assert {"pretrain", "control"} <= set(two["finetune"].needs)
    assert not any("[" in n for n in two["finetune"].needs)  # the first seed only
    assert {"pretrain[seed1]", "control[seed1]"} <= set(two["evaluate"].inputs)
    assert two.by_role("model").name == "pretrain"  # what is gated and promoted
    assert tracking.step_label("pretrain[seed1]") == "pretrain.seed1"  # an MLflow key


def test_each_seed_chooses_its_checkpoint_against_the_control_of_its_seed(
        domain: Path, tmp_path: Path) -> None:
    """With select_checkpoint, pretrain[seed i] reads control[seed i] (planned before it), and the
    first seed's key does not change when seeds are added."""
    _, one = _plan(domain, tmp_path, "pretrain.select_checkpoint=true")
    _, two = _plan(domain, tmp_path, "pretrain.select_checkpoint=true", "pretrain.seeds=2")
    assert list(two) == ["ingest", "models", "tokenizer", "general", "control", "control[seed1]",
                         "pretrain", "pretrain[seed1]", "finetune", "evaluate"]
    assert {n: k for n, k in two["pretrain"].inputs.items() if n.startswith("control")} == {
        "control": two["control"].key}
    assert {n: k for n, k in two["pretrain[seed1]"].inputs.items()
            if n.startswith("control")} == {"control[seed1]": two["control[seed1]"].key}
    assert two["pretrain"].key == one["pretrain"].key


def test_dapt_plan_seeds_is_set_pretrain_seeds(domain: Path, tmp_path: Path) -> None:
    def rows(*args: str) -> list[dict]:
        result = CliRunner().invoke(app, ["plan", "--domain-file", str(domain), "--json",
                                          "--workdir", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    sets = [a for s in CONTROL for a in ("--set", s)]
    by_flag = rows(*sets, "--seeds", "3")
    assert by_flag == rows(*sets, "--set", "pretrain.seeds=3")
    assert [r["step"] for r in by_flag if r["stage"] == "pretrain"] == [
        "pretrain", "pretrain[seed1]", "pretrain[seed2]"]
    bad = CliRunner().invoke(app, ["plan", "--domain-file", str(domain), "--seeds", "0"])
    assert bad.exit_code == 2


# --- the statistics, on per-document scores made by hand ---------------------------------------


def test_the_interval_is_the_seed_spread_when_documents_agree() -> None:
    """Every cluster has the same ratio within a seed: only the seed draw moves the mean."""
    reference = np.full((2, 50), 10.0)
    adapted = reference * np.array([[0.9], [0.8]])  # seed 0: -10%, seed 1: -20%
    low, high = seeds.two_level_interval(adapted, reference, 2000)
    assert (low, high) == (pytest.approx(-0.2), pytest.approx(-0.1))
    # one seed pair repeated: no spread at all
    same = seeds.two_level_interval(adapted[:1].repeat(2, 0), reference, 500)
    assert same == (pytest.approx(-0.1), pytest.approx(-0.1))


def test_documents_of_one_group_move_together() -> None:
    """Half the documents gain 50%, half nothing: resampled as two groups the interval is far
    wider than resampled as 40 independent documents."""
    nll_ref = np.ones((1, 40))
    nll_adapted = np.where(np.arange(40) < 20, 0.5, 1.0)[None, :]
    by_doc = seeds.two_level_interval(seeds.cluster_sums(nll_adapted, np.arange(40)),
                                      seeds.cluster_sums(nll_ref, np.arange(40)), 2000)
    groups = np.arange(40) // 20
    by_group = seeds.two_level_interval(seeds.cluster_sums(nll_adapted, groups),
                                        seeds.cluster_sums(nll_ref, groups), 2000)
    assert by_doc[0] < -0.25 < by_doc[1] and by_doc[1] - by_doc[0] < 0.2
    assert by_group == (pytest.approx(-0.5), pytest.approx(0.0))


def test_seed_metrics_pair_seed_i_with_seed_i() -> None:
    rng = np.random.default_rng(3)
    n = 30
    nbytes = rng.integers(50, 200, n)
    general = np.arange(n) >= 20

    def scores(scale: float) -> list[tuple[float, int]]:
        return [(float(b) * scale * (1 + 0.1 * rng.random()), 10) for b in nbytes]

    given = {"adapted": [scores(0.8), scores(0.7)], "control": [scores(1.0), scores(0.9)],
             "base": [scores(1.1)]}
    m = seeds.seed_metrics(EvaluateConfig(bootstrap_samples=300), given, nbytes, general,
                           np.arange(n) // 2)
    assert m["train_seeds"] == 2
    dom = np.flatnonzero(~general)
    change = [sum(given["adapted"][i][d][0] for d in dom)
              / sum(given["control"][i][d][0] for d in dom) - 1 for i in range(2)]
    assert m["domain_change_vs_control_seed0"] == pytest.approx(change[0])
    assert m["domain_change_vs_control_seed_mean"] == pytest.approx(np.mean(change))
    assert m["domain_change_vs_control_seed_std"] == pytest.approx(np.std(change, ddof=1))
    assert m["domain_change_vs_control_ci_low"] < np.mean(change) < m[
        "domain_change_vs_control_ci_high"]
    bpb = [sum(given["control"][i][d][0] for d in dom) / np.log(2) / nbytes[dom].sum()
           for i in range(2)]
    assert m["control_heldout_bits_per_byte_seed_std"] == pytest.approx(np.std(bpb, ddof=1))
    for name in ("general_change_vs_control", "domain_bits_per_byte_change",
                 "general_bits_per_byte_seed_mean", "heldout_bits_per_byte_seed1"):
        assert any(k.startswith(name) for k in m), name
    blocks = report.to_markdown(report.seed_blocks(
        {"seeds": seeds.seed_table(m, [7, 8], "group", 300)}))
    assert "### Training seeds (2)" in blocks and "clusters (`group`), 300 replicates" in blocks
    low, high = m["domain_change_vs_control_ci_low"], m["domain_change_vs_control_ci_high"]
    assert f"| domain_change_vs_control | {m['domain_change_vs_control_seed_mean']:.4g} |" in blocks
    assert f"{low:+.4g} to {high:+.4g} |" in blocks and "\n| 8 | " in blocks
    # the headline's point is the mean over seeds, inside its interval; the gates' seed follows
    mean, sd = m["domain_change_vs_control_seed_mean"], m["domain_change_vs_control_seed_std"]
    masked = {**m, "domain_change_vs_control_masked": change[0]}
    who, parts, _ = headline(masked, None, promoted=False)
    assert who == "adapted vs control, mean of 2 training seeds per arm"
    assert parts[0] == (f"domain bits/byte {mean:+.1%} +- {sd:.1%} sd "
                        f"(95% CI {low:+.1%} to {high:+.1%})")
    assert seeds.verdict_text(m).startswith(
        f"; the gates judge the first seed's models (domain vs control {change[0]:+.1%}, ")
    assert seeds.seed_metrics(EvaluateConfig(), {"adapted": given["adapted"][:1]}, nbytes,
                              general, np.arange(n)) == {"train_seeds": 1.0}
