"""No hidden compile: DeepSpeed's JIT-compiled ops land in one place next to the venv whether
dapt runs through make, from an activated venv, or as a training rank."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
# torch.utils.cpp_extension (which DeepSpeed's op builders call) builds under this variable.
PROBE = "import pipeline, os; print(os.environ['TORCH_EXTENSIONS_DIR'])"


def _resolved(env: dict[str, str], *args: str) -> Path:
    out = subprocess.run([sys.executable, *args], cwd=REPO, env=env, text=True,
                         capture_output=True, check=True).stdout
    return Path(out.strip().splitlines()[-1]).resolve()


def _env_without_dir() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}


@pytest.mark.slow  # runs make and a fresh interpreter
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_plain_invocation_uses_the_makefiles_dir() -> None:
    env = _env_without_dir()
    plain = _resolved(env, "-c", PROBE)
    # The Makefile's own value, for a venv at sys.prefix (a clone's .venv, or this one)
    venv = os.path.relpath(sys.prefix, REPO)
    made = subprocess.run(
        ["make", "-s", "-C", str(REPO), f"VENV={venv}", "--eval",
         "print-ext-dir: ; @echo $$TORCH_EXTENSIONS_DIR", "print-ext-dir"],
        env=env, text=True, capture_output=True, check=True).stdout.strip()
    assert plain == Path(made).resolve() == (Path(sys.prefix) / "torch_extensions").resolve()
    # a training rank (`python -m pipeline.stages.pretrain.worker`, from DeepSpeed's launcher or
    # directly) imports this package before deepspeed, so it resolves the same directory
    assert "import deepspeed" in (REPO / "pipeline/stages/pretrain/worker.py").read_text()
    worker = _resolved(env, "-c", "import pipeline.stages.pretrain.worker, os; "
                                  "print(os.environ['TORCH_EXTENSIONS_DIR'])")
    assert worker == plain


def test_a_users_own_setting_wins(tmp_path: Path) -> None:
    env = {**_env_without_dir(), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    assert _resolved(env, "-c", PROBE) == (tmp_path / "ext").resolve()
