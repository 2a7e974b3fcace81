"""bench/gpu_check.py: the GPU check's dry run on this CPU (the same code path, fp32, a tiny
budget) and its pieces (the chip table, the CPU reference file, the stage's timed rate)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_check
from bench.train import stage_rate
from tests.conftest import seed_base_model

ROOT = Path(__file__).resolve().parent.parent


def test_chip_peaks_by_device_name() -> None:
    assert gpu_check.chip_peak("NVIDIA H100 80GB HBM3") == 989.4e12
    assert gpu_check.chip_peak("NVIDIA H100 PCIe") == 756.0e12
    assert gpu_check.chip_peak("NVIDIA H100 NVL") == 835.5e12
    assert gpu_check.chip_peak("NVIDIA H200") == 989.4e12
    assert gpu_check.chip_peak("NVIDIA H200 NVL") == 835.5e12
    assert gpu_check.chip_peak("NVIDIA A100-SXM4-80GB") is None


def test_stage_rate_leaves_out_the_warmup_windows() -> None:
    # 3 windows of 10 steps x 100 tokens: 20 s, then 10 s and 5 s
    curve = [{"step": 10, "tokens": 1000, "tokens_per_s": 50.0},
             {"step": 20, "tokens": 2000, "tokens_per_s": 100.0},
             {"step": 30, "tokens": 3000, "tokens_per_s": 200.0}]
    assert stage_rate(curve, 10) == pytest.approx(2000 / 15)
    with pytest.raises(ValueError, match="no logged step after the 30"):
        stage_rate(curve, 30)


def test_a_reference_for_other_shapes_is_refused(tmp_path: Path) -> None:
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"base_model": "smollm2-135m", "seq_len": 2048, "steps": 10,
                               "micro_batch_size": 1, "precision": "fp32", "device": "cpu",
                               "train_tokens": 5, "losses": [3.0] * 10}))
    prep = gpu_check.Prepared(tmp_path, tmp_path, tmp_path, {"train": {"tokens": 5}}, 0, 0, {})
    assert gpu_check.reference(prep, gpu_check.GPU, ref)["losses"] == [3.0] * 10
    with pytest.raises(ValueError, match="--reference .*ref.json"):
        gpu_check.reference(prep, gpu_check.DRY, ref)


@pytest.mark.slow
def test_dry_run(tmp_path: Path, smollm2) -> None:
    """The whole check on this CPU: the reference and the device run agree exactly (both fp32 on
    the CPU), and every run reports a rate, a step time and an MFU."""
    seed_base_model(smollm2, tmp_path / "work")
    out = tmp_path / "dry.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(out),
         "--workdir", str(tmp_path / "work"), "--reference", str(tmp_path / "ref.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    check = result["check"]
    assert check["passed"] and check["max_relative_diff"] < 1e-6
    assert len(check["losses"]) == gpu_check.DRY.check_steps
    # SmolLM2 cut to 2 layers is a real model in a smaller shape, not a good one: its final
    # norm and head expect the 30th layer's output (a loss of about 21, a uniform guess 10.8)
    assert all(math.isfinite(loss) and 15 < loss < 30 for loss in check["losses"]), check
    assert json.loads((tmp_path / "ref.json").read_text())["losses"] == check["reference_losses"]
    names = [r["name"] for r in result["runs"]]
    assert names == ["stage", "stage-compiled", "plain fp32 loop"]
    for row in result["runs"]:
        assert row["tokens_per_s"] > 0 and row["timed_steps"] >= 1
        assert math.isclose(row["step_s"] * row["tokens_per_s"], 2 * 64, rel_tol=1e-6)
        assert 0 < row["mfu"] < 1
    assert result["runs"][0]["peak_memory_gb"] > 0  # the worker's peak RSS on a CPU
    assert 30e6 < result["params"] < 40e6  # embeddings (28.3M) + 2 of 30 layers (3.5M each)
    assert "cut to its first 2 layers" in result["report"]
    assert "PASSED" in result["report"]
