"""The CPU profile's path on the real SmolLM2-135M weights, with tiny budgets: continued
pretraining with the checkpoint choice, the shared control run, linear-probe scoring of base,
control and adapted, the verdict and its standard errors, and a 2-point LR x replay sweep."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from pipeline.config import SweepConfig
from pipeline.driver import Session, plan
from pipeline.lifecycle.sweep import run_sweep
from pipeline.stages.control import stage as control
from pipeline.stages.evaluate.output import EvaluateOutput
from pipeline.stages.finetune.output import FinetuneOutput
from pipeline.stages.pretrain.output import PretrainOutput
from pipeline.stages.pretrain.packing import TokenBatches
from tests.conftest import seed_base_model
from tests.e2e_domain import write_test_domain

pytestmark = pytest.mark.slow  # trains SmolLM2-135M (a few steps, several times)

# Budgets as small as the assertions allow: every SmolLM2 forward pass here is real.
MAX_EVAL_DOCS = 30
CPU_TEST = {
    "pretrain": {"seq_len": 64, "micro_batch_size": 2, "grad_accum_steps": 1, "max_steps": 4,
                 "warmup_steps": 1, "log_every": 1, "eval_every": 2, "checkpoint_every": 4,
                 "keep_checkpoints": 1, "eval_max_seqs": 4, "lr": 1e-4},
    "finetune": {"max_train_examples": 40, "max_test_examples": 24, "max_seq_len": 32,
                 "seeds": [0, 1]},
    # gates wide enough to pass after 4 steps, so the verdict reports both; the test checks
    # each outcome against its value and limit, not that they passed
    # zero-shot on a few examples (the ICD chapter task scores 22 long class names per
    # example; tests/pipeline/stages/test_zeroshot.py tests the scorer)
    # the context token is chosen on 8 dev documents: one batch per candidate token
    "evaluate": {"max_eval_docs": MAX_EVAL_DOCS, "max_general_docs": 4, "bootstrap_samples": 200,
                 "context_dev_docs": 8,
                 "min_domain_gain": -1.0, "max_general_degradation": 1.0,
                 "zeroshot_max_examples": 8, "zeroshot_rule_examples": 8,
                 "zeroshot_max_chars": 200},
}


def cpu_domain(samples: Path, root: Path, name: str = "medtest", **pretrain: object) -> Path:
    path = write_test_domain(samples, root)
    doc = yaml.safe_load(path.read_text())
    doc["name"] = name
    doc["profiles"] = {"cpu": {k: dict(v) for k, v in CPU_TEST.items()}}
    doc["profiles"]["cpu"]["pretrain"].update(pretrain)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cpu_run(samples_dir: Path, smollm2, tmp_path_factory: pytest.TempPathFactory) -> Session:
    root = tmp_path_factory.mktemp("cpu")
    seed_base_model(smollm2, root / "work")
    session = Session.open(None, "cpu", workdir=root / "work",
                           domain_file=cpu_domain(samples_dir, root))
    session.run_all()
    return session


def test_cpu_profile_runs_all_stages_and_states_a_verdict(cpu_run: Session) -> None:
    ev = cpu_run.artifacts["evaluate"]
    m = ev.manifest.metrics
    # today's names stay, whatever method produced the downstream scores
    for name in ("base_heldout_bits_per_byte", "heldout_bits_per_byte",
                 "domain_bits_per_byte_gain", "general_bits_per_byte_change",
                 "finetune_macro_f1", "finetune_base_macro_f1", "control_heldout_bits_per_byte",
                 "control_general_bits_per_byte", "finetune_control_macro_f1",
                 "domain_bits_per_byte_change", "domain_change_vs_control"):
        assert name in m, name
    assert m["domain_bits_per_byte_gain"] == pytest.approx(
        m["base_heldout_bits_per_byte"] - m["heldout_bits_per_byte"])
    assert m["domain_bits_per_byte_change"] == pytest.approx(
        m["heldout_bits_per_byte"] / m["base_heldout_bits_per_byte"] - 1, rel=1e-6)
    assert m["domain_bits_per_byte_change_se"] > 0 and m["heldout_bits_per_byte_se"] > 0
    # real weights: bits/byte of a 135M model on English text, not of a random one (~3.3+)
    assert 0.5 < m["base_heldout_bits_per_byte"] < 2.0
    evaluation = EvaluateOutput(ev)
    verdict = evaluation.verdict
    # the headline is adapted vs control, masked, with its intervals; the base is named
    assert verdict["text"].startswith("adapted vs control: domain bits/byte ")
    assert "95% CI" in verdict["text"] and "macro-F1" in verdict["text"]
    assert "zero-shot accuracy" in verdict["text"] and 0 <= m["zeroshot_accuracy"] <= 1
    assert ("vs base smollm2-135m (dequantised from SmolLM2-135M-Instruct.Q4_1.gguf), the "
            "starting point, not the baseline") in verdict["text"]
    for slice_ in ("domain", "general"):
        low, high = (m[f"{slice_}_change_vs_control_ci_{e}"] for e in ("low", "high"))
        assert low <= m[f"{slice_}_change_vs_control_masked"] <= high
    assert evaluation.evaluation["context"]["token"] in ("<|im_end|>", "<|im_start|>",
                                                         "<|endoftext|>")
    assert 0 < m["first_token_nll_share"] < 1
    # each gate compares the metric it names with the configured limit, in its direction
    gates = {g["gate"]: g for g in evaluation.gates}
    gain, change = gates["evaluate.min_domain_gain"], gates["evaluate.max_general_degradation"]
    limits = CPU_TEST["evaluate"]
    assert list(gates) == ["evaluate.min_domain_gain", "evaluate.max_general_degradation"]
    assert (gain["value"], gain["limit"]) == (m["domain_bits_per_byte_gain"],
                                              limits["min_domain_gain"])
    # with a control, forgetting is measured against it (masked), as the headline reads it
    assert change["vs"] == "control"
    assert (change["value"], change["limit"]) == (m["general_change_vs_control_masked"],
                                                  limits["max_general_degradation"])
    assert gain["passed"] == (gain["value"] >= gain["limit"])
    assert change["passed"] == (change["value"] <= change["limit"])
    assert evaluation.failed_gates == [g for g in gates.values() if not g["passed"]]
    report = (ev.path / "report.md").read_text()
    assert report.splitlines()[2].startswith("**Verdict**: adapted vs control")
    assert "Checkpoint choice" in report and "Base, control and adapted" in report
    assert "Reference: the control (control/" in report and "general vs control" in report
    assert (ev.path / "plots/checkpoints.png").stat().st_size > 1000
    ft = FinetuneOutput(cpu_run.artifacts["finetune"])
    assert ft.method == "probe" and ft.seeds == CPU_TEST["finetune"]["seeds"]
    assert ft.models == ["adapted", "base", "control"]
    # the headline figures evaluate republishes are the first task's
    first = ft.tasks[0][1]
    assert ft.metrics["macro_f1"] == first["adapted"]["macro_f1"]
    assert m["finetune_macro_f1"] == ft.metrics["macro_f1"]


def test_checkpoint_choice_exports_the_chosen_eval_point(cpu_run: Session) -> None:
    art = cpu_run.artifacts["pretrain"]
    out = PretrainOutput(art.path)
    sel = out.summary.selection
    assert sel is not None and [c.step for c in sel.candidates] == [0, 2, 4]
    assert sel.chosen_step in (2, 4) and not (art.path / "candidates").exists()
    # the general limit is measured from the control (an input of pretrain)
    assert sel.reference == "control" and sel.control_key == cpu_run.plan["control"].key
    assert art.manifest.inputs["control"] == sel.control_key
    chosen = next(c for c in sel.candidates if c.step == sel.chosen_step)
    # the exported weights are the chosen eval point's: they reproduce its dev loss
    model = AutoModelForCausalLM.from_pretrained(out.hf_dir)
    x = torch.from_numpy(TokenBatches(art.path / "data", "eval", 0).batch([0, 1, 2, 3]))
    with torch.no_grad():
        loss = sum(model(input_ids=x[i:i + 2], labels=x[i:i + 2]).loss.item()
                   for i in (0, 2)) / 2
    assert loss == pytest.approx(chosen.eval_loss, rel=1e-4)
    assert out.summary.eval_loss == chosen.eval_loss


def test_evaluate_scores_only_the_test_part(cpu_run: Session) -> None:
    from pipeline.stages.ingest.artifact import IngestOutput

    parts = IngestOutput(cpu_run.artifacts["ingest"]).held_out_parts(["source", "text"])
    n_test = (min(parts["domain"]["test"].num_rows, MAX_EVAL_DOCS)
              + min(parts["general"]["test"].num_rows, 4))
    assert cpu_run.artifacts["evaluate"].manifest.counts["eval_docs"] == n_test


def test_one_control_serves_every_domain_with_the_same_recipe(
        cpu_run: Session, samples_dir: Path, tmp_path: Path) -> None:
    key = cpu_run.plan["evaluate"].inputs["control"]
    art = cpu_run.store.get("control", key)
    assert art is not None and (art.path / "hf/model.safetensors").exists()
    assert cpu_run.artifacts["evaluate"].manifest.inputs["control"] == key
    # another domain (other sources, other replay share) with the same recipe: the same control
    other = cpu_domain(samples_dir, tmp_path, name="other", mixture={"general": 0.3})
    doc = yaml.safe_load(other.read_text())
    doc["ingest"]["sources"] = doc["ingest"]["sources"][1:]
    other.write_text(yaml.safe_dump(doc))
    from pipeline import domains

    d = domains.load_file(other)
    assert plan(d, d.resolve("cpu"), cpu_run.workdir)["evaluate"].inputs["control"] == key
    # a different learning rate is a different recipe
    faster = cpu_domain(samples_dir, tmp_path / "lr", name="other", lr=3e-4)
    d = domains.load_file(faster)
    assert plan(d, d.resolve("cpu"), cpu_run.workdir)["evaluate"].inputs["control"] != key
    # the control never trains on a document any domain could hold out
    assert control.HOLD_OUT >= 0.5


def test_sweep_two_points_writes_table_and_pareto_pick(cpu_run: Session) -> None:
    # 4 steps: DeepSpeed's linear warmup from 0 leaves the first two at lr 0
    # One lr, two replay shares: one control proxy serves both points (the edge extension is
    # tests/pipeline/lifecycle/test_sweep_edge.py's, one proxy per lr test_sweep_control.py's)
    grid = SweepConfig(lrs=[1e-4], replay=[0.0, 0.2], max_steps=4, extend_edge=False)
    out = run_sweep(cpu_run.domain, cpu_run.run, cpu_run.workdir, grid)
    assert [(p["lr"], p["replay"]) for p in out["points"]] == [(1e-4, 0.0), (1e-4, 0.2)]
    points = out["points"]
    # Pareto, by its definition: no other point is at least as good on both changes (general:
    # vs the control) and strictly better on one
    g = "general_change_vs_control"
    for p in points:
        beaten = any((q["domain_change"], q[g]) != (p["domain_change"], p[g])
                     and q["domain_change"] <= p["domain_change"]
                     and q[g] <= p[g] for q in points)
        assert p["pareto"] is not beaten, p
    # the cpu profile runs a control: one control proxy per lr, and the pick is the lowest
    # domain change among the points whose general change vs it is within the verdict's
    # forgetting limit (else the least general rise vs the control)
    assert [c["lr"] for c in out["controls"]] == [1e-4]
    assert out["gate"]["reference"] == "control"
    limit, field = cpu_run.run.evaluate.max_general_degradation, "general_change_vs_control"
    assert out["limit"] == limit and out["gate"]["field"] == field
    within = [p for p in points if p[field] <= limit]
    expected = (min(within, key=lambda p: p["domain_change"]) if within
                else min(points, key=lambda p: p[field]))
    assert (out["pick"]["lr"], out["pick"]["replay"]) == (expected["lr"], expected["replay"])
    assert min(p["domain_change"] for p in out["points"]) < 0  # training moved the dev loss
    sweep_dir = Path(out["dir"])
    table = (sweep_dir / "sweep.md").read_text()
    assert "| 0.0001 | 0 |" in table and "| 0.0001 | 0.2 |" in table and "**yes**" in table
    assert (sweep_dir / "sweep.png").stat().st_size > 1000
    rows = cpu_run.catalog.query("SELECT name, value FROM metrics WHERE run_id = ?",
                                 [out["sweep_id"]])
    got = {r["name"]: r["value"] for r in rows}
    assert got["pick_lr"] == out["pick"]["lr"] and "lr=0.0001,replay=0.2.domain_change" in got
    assert "lr=0.0001,replay=0.2.general_change_vs_control" in got
    # rerunning trains nothing: every point and control is a cached artifact
    again = run_sweep(cpu_run.domain, cpu_run.run, cpu_run.workdir, grid)
    assert all(p["cached"] for p in again["points"] + again["controls"])
