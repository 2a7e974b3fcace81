"""Base vs adapted: a tiny model trained here from scratch is the base model of a continue-mode
run; evaluation scores both on the same held-out text and applies the quality gates."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline import QualityGateError, StageError
from pipeline.config import EvaluateConfig
from pipeline.driver import Session
from pipeline.stages.evaluate.stage import comparison, score_documents, slice_scores
from pipeline.stages.ingest.artifact import IngestOutput
from tests.e2e_domain import write_test_domain

# lr 1e-12: the adapted model is the base model to within rounding: no domain gain
CONTINUE = {"max_steps": 4, "warmup_steps": 1, "log_every": 2, "eval_every": 0, "lr": 1e-12}
# base and adapted are fine-tuned on the same examples with the same 2 seeds; nothing here
# needs them to learn
FINETUNE = {"max_train_examples": 100, "max_test_examples": 50, "epochs": 1}


@pytest.fixture(scope="module")
def continued(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("base-vs-adapted")
    base_domain = write_test_domain(samples_dir, root / "base", pretrain={
        "max_steps": 20, "warmup_steps": 2, "eval_every": 0})
    base = Session.open(None, "tiny", workdir=root / "work", domain_file=base_domain)
    base.run_stage("pretrain")
    base_hf = base.artifacts["pretrain"].path / "hf"

    def session(**evaluate: object) -> Session:
        domain = write_test_domain(
            samples_dir, root / "adapted", evaluate=evaluate, finetune=FINETUNE,
            pretrain={**CONTINUE, "mode": "continue", "base_model": str(base_hf)})
        return Session.open(None, "tiny", workdir=root / "work", domain_file=domain)

    return {"base_hf": base_hf, "session": session}


@pytest.mark.slow
def test_base_and_adapted_are_scored_on_the_same_text(continued: dict) -> None:
    session = continued["session"](min_domain_gain=None, max_general_degradation=None)
    session.run_all()
    assert session.catalog.runs(limit=1)[0]["status"] == "completed"
    art = session.artifacts["evaluate"]
    m = art.manifest.metrics
    assert "models" in art.manifest.inputs  # the base model is an input of evaluation
    assert m["domain_bits_per_byte_gain"] == pytest.approx(0.0, abs=1e-4)
    assert m["general_bits_per_byte_change"] == pytest.approx(0.0, abs=1e-4)
    # the base figures are the base model's own score of the held-out text
    saved = json.loads((art.path / "metrics.json").read_text())
    sources = [k for k in saved["per_source"] if k.startswith("source:")]
    assert "source:general" in sources and saved["base_per_source"].keys() == \
        saved["per_source"].keys()
    # evaluate scores the test part of the held-out slice (the dev part is for choices)
    held = IngestOutput(session.artifacts["ingest"]).held_out_parts(["source", "text"])
    domain_texts = held["domain"]["test"].column("text").to_pylist()[:100]
    # the context token is chosen on the dev part (one candidate here: BOS = EOS), and the
    # masked figures come beside today's
    assert saved["context"] == {"token": "<|endoftext|>", "candidates": {},
                                "dev_docs": min(64, held["domain"]["dev"].num_rows)}
    assert m["heldout_bits_per_byte_masked"] > 0 and "domain_bits_per_byte_change_masked" in m
    assert "bits/byte masked" in (art.path / "report.md").read_text()
    scores = score_documents(AutoModelForCausalLM.from_pretrained(continued["base_hf"]),
                             AutoTokenizer.from_pretrained(continued["base_hf"]), domain_texts,
                             128, 8)
    base = slice_scores(scores, domain_texts, ["x"] * len(domain_texts),
                        [False] * len(domain_texts))
    assert m["base_heldout_bits_per_byte"] == pytest.approx(base["domain"]["bits_per_byte"],
                                                            rel=1e-6)
    report = (art.path / "report.md").read_text()
    assert "### Base vs adapted" in report and "| general |" in report
    # fine-tuning ran for the base model too, on the same test examples with the same seeds
    ft = session.artifacts["finetune"]
    assert "models" in ft.manifest.inputs and ft.manifest.extra["models"] == ["adapted", "base"]
    preds = pq.read_table(ft.path / "predictions.parquet").to_pylist()
    for task in ("organ_system", "icd10_chapter"):
        ids = {(r["model"], r["seed"]): [] for r in preds if r["task"] == task}
        for r in preds:
            if r["task"] == task:
                ids[(r["model"], r["seed"])].append(r["id"])
        assert sorted(ids) == [("adapted", 0), ("adapted", 1), ("base", 0), ("base", 1)]
        assert len({tuple(v) for v in ids.values()}) == 1
    assert m["finetune_macro_f1_gain"] == pytest.approx(
        m["finetune_macro_f1"] - m["finetune_base_macro_f1"])
    assert "| organ_system macro-f1 (mean +- std, 2 seeds) |" in report


@pytest.mark.slow
def test_no_domain_gain_fails_the_gate_with_the_numbers(continued: dict) -> None:
    session = continued["session"](max_general_degradation=None)  # min_domain_gain: 0.001
    with pytest.raises(StageError, match=r"stage evaluate failed .* fails its quality gates: "
                                         r"domain bits-per-byte \d\.\d{4} is not 0.001 below "
                                         r"the base model's \d\.\d{4}"):
        session.run_all()
    # a verdict, not a crash: the run is recorded as not promoted
    assert session.catalog.runs(limit=1)[0]["status"] == "not promoted"


def test_general_degradation_gate_on_hand_checked_numbers() -> None:
    base = {"domain": {"bits_per_byte": 2.0}, "general": {"bits_per_byte": 1.0}}
    adapted = {"domain": {"bits_per_byte": 1.5}, "general": {"bits_per_byte": 1.08}}
    out = comparison(EvaluateConfig(max_general_degradation=0.1), adapted, base)
    assert out["domain_bits_per_byte_gain"] == 0.5
    assert out["general_bits_per_byte_change"] == pytest.approx(0.08)
    with pytest.raises(QualityGateError, match=r"general bits-per-byte rose \+8.0% over the "
                                               r"base model's \(1.0000 -> 1.0800\); "
                                               r"evaluate.max_general_degradation is 5.0%"):
        comparison(EvaluateConfig(max_general_degradation=0.05), adapted, base)
    assert "base_general_bits_per_byte" not in comparison(
        EvaluateConfig(), adapted, {"domain": base["domain"]})
