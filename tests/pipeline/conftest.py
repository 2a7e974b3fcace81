"""Runs that more than one test module compares against, made once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.driver import Session
from tests.e2e_domain import write_test_domain

# The 2-rank run both test_multirank (against 1 rank) and test_multinode (against 2 nodes)
# compare with. Global batch 16: 2 ranks x micro-batch 8.
BASE = {"max_steps": 8, "warmup_steps": 1, "log_every": 1, "zero_stage": 2,
        "micro_batch_size": 8, "eval_max_seqs": 8}
TWO_RANKS = {**BASE, "num_gpus": 2, "grad_accum_steps": 1}


@pytest.fixture(scope="session")
def two_ranks(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Session:
    """Pretraining with 2 ranks on one node (DeepSpeed's launcher, gloo, ZeRO-2); its workdir
    also holds the ingest and tokenizer artifacts a run of the same slice reuses."""
    root = tmp_path_factory.mktemp("two-ranks")
    domain = write_test_domain(samples_dir, root, tokenizer={"vocab_size": 1024},
                               pretrain=TWO_RANKS)
    session = Session.open(None, "tiny", workdir=root / "work", domain_file=domain)
    session.run_stage("pretrain")
    return session


def pretrain_outputs(path: Path) -> dict:
    """What the multi-rank tests compare of a pretrain artifact at ``path``: its summary, its
    per-step losses and its launch command."""
    return {"summary": json.loads((path / "summary.json").read_text()),
            "losses": [json.loads(r)["loss"] for r in
                       (path / "metrics.jsonl").read_text().splitlines()],
            "launch": (path / "launch.sh").read_text()}
