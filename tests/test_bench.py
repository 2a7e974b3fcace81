"""The benchmark scripts start (``python -m bench.NAME --help`` from the repository root), and
none is named after a standard-library module (bench/tokenize.py once shadowed ``tokenize``,
and every other bench script died importing torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__")


def test_no_bench_module_shadows_the_standard_library() -> None:
    assert not set(SCRIPTS) & sys.stdlib_module_names


@pytest.mark.parametrize("script", [
    pytest.param(s, marks=pytest.mark.slow) if s in ("train", "probe") else s for s in SCRIPTS])
def test_bench_script_starts(script: str) -> None:
    out = subprocess.run([sys.executable, "-m", f"bench.{script}", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout  # (DeepSpeed prints a warning line first)
