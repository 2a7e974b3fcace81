"""Pretraining survives SIGKILL: the rerun resumes from the last checkpoint and reproduces the
uninterrupted run exactly (CPU, fp32), and a diverging run stops with its last good checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline import StageError
from pipeline.driver import Session
from pipeline.engine.catalog import Catalog
from tests.e2e_domain import write_test_domain

pytestmark = pytest.mark.slow  # DeepSpeed runs killed and resumed

RESUMABLE = {"tokenizer": {"vocab_size": 1024},
             "pretrain": {"max_steps": 12, "warmup_steps": 2, "log_every": 1,
                          "checkpoint_every": 4, "keep_checkpoints": 2, "eval_max_seqs": 8,
                          "keep_final_checkpoint": True}}
KILL = """
import sys
from pipeline.driver import Session
Session.open(None, "tiny", workdir=sys.argv[1], domain_file=sys.argv[2]).drive(upto="pretrain")
"""


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    domain = write_test_domain(samples_dir, root, **RESUMABLE)
    whole = Session.open(None, "tiny", workdir=root / "a", domain_file=domain)
    whole.run_stage("pretrain")
    return domain, whole.artifacts["pretrain"].path


def _interrupt(domain: Path, workdir: Path, sig: int) -> int:
    """Start the stage in its own process group and send ``sig`` to all of it after step 6."""
    proc = subprocess.Popen([sys.executable, "-c", KILL, str(workdir), str(domain)],
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while True:  # step 6 logged: the step-4 checkpoint exists by then
        logs = list((workdir / "artifacts/pretrain").glob(".tmp-*/metrics.jsonl"))
        if logs and any(r["step"] >= 6 for r in _records(logs[0])):
            break
        assert proc.poll() is None and time.monotonic() < deadline, "training never got going"
        time.sleep(0.2)
    os.killpg(proc.pid, sig)
    return proc.wait(timeout=120)


def _resume_and_compare(domain: Path, workdir: Path, reference: Path) -> dict:
    again = Session.open(None, "tiny", workdir=workdir, domain_file=domain)
    assert not again.run_stage("pretrain")["cache_hit"]
    b = again.artifacts["pretrain"].path
    assert not list((workdir / "artifacts/pretrain").glob(".tmp-*"))
    assert not list((workdir / "artifacts/pretrain").glob(".failed-*"))  # adopted, not left

    curve = lambda p: [(r["step"], r["loss"], r["lr"], r["grad_norm"])  # noqa: E731
                       for r in _records(p / "metrics.jsonl")]
    assert curve(b) == curve(reference)  # exact equality: tolerance 0 on CPU fp32
    wa = load_file(reference / "hf/model.safetensors")
    wb = load_file(b / "hf/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    return json.loads((b / "summary.json").read_text())


def test_sigkill_then_resume_reproduces_the_run_bitwise(uninterrupted, tmp_path: Path) -> None:
    domain, a = uninterrupted
    assert _interrupt(domain, tmp_path, signal.SIGKILL) == -signal.SIGKILL
    [run] = Catalog(tmp_path / "catalog.duckdb").runs()
    assert run["status"] == "crashed"  # its process is gone: not `running` forever
    [leftover] = list((tmp_path / "artifacts/pretrain").glob(".tmp-*"))
    assert (leftover / "checkpoint/latest").exists()
    summary = _resume_and_compare(domain, tmp_path, a)
    assert summary["resumed_from_step"] in (4, 8)
    assert sorted(p.name for p in (a / "checkpoint").glob("global_step*")) == [
        "global_step12", "global_step8"]  # keep_checkpoints = 2


def test_sigterm_checkpoints_at_the_current_step_then_resumes(uninterrupted,
                                                              tmp_path: Path) -> None:
    domain, a = uninterrupted
    assert _interrupt(domain, tmp_path, signal.SIGTERM) != 0  # the stage failed, loudly
    [run] = Catalog(tmp_path / "catalog.duckdb").runs()
    assert run["status"] == "failed" and "stage pretrain failed" in run["error"]
    [failed] = list((tmp_path / "artifacts/pretrain").glob(".failed-*"))
    stopped_at = int((failed / "checkpoint/latest").read_text().strip()[11:])
    assert stopped_at >= 6  # saved on the signal, not only at the step-4 interval
    summary = _resume_and_compare(domain, tmp_path, a)
    assert summary["resumed_from_step"] == stopped_at


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(samples_dir: Path,
                                                              tmp_path: Path) -> None:
    # An absurd learning rate without clipping overflows fp32 within a few steps.
    domain = write_test_domain(samples_dir, tmp_path, tokenizer={"vocab_size": 1024}, pretrain={
        "max_steps": 20, "warmup_steps": 0, "lr": 1e30, "grad_clip": 0.0, "log_every": 1,
        "checkpoint_every": 1, "eval_max_seqs": 8})
    session = Session.open(None, "tiny", workdir=tmp_path / "w", domain_file=domain)
    with pytest.raises(StageError) as err:
        session.run_stage("pretrain")
    message = str(err.value)
    assert "stage pretrain failed" in message and "non-finite training loss" in message
    assert "last good checkpoint: global_step" in message
    [failed] = list((tmp_path / "w/artifacts/pretrain").glob(".failed-*"))
    assert f"partial outputs of the failed build: {failed}" in message
    latest = (failed / "checkpoint/latest").read_text().strip()
    assert (failed / "checkpoint" / latest).is_dir()
