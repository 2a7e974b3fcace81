"""The engine, the driver and the flows name no step: the steps are data (``StepSpec``s beside
their stages), so adding one (a safety filter after ingest, say) touches no engine code."""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline.stages.steps import STEPS

REPO = Path(__file__).resolve().parents[3]
CODE = sorted([*(REPO / "pipeline/engine").glob("*.py"), REPO / "pipeline/driver.py",
               *(REPO / "flows").glob("*.py")])
# `dapt models ...` is a command group of the CLI, not the step's name compared or looked up
ALLOWED = {("flows/cli.py", "models")}


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, kinds) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def step_names_in(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """Every string literal of ``path`` (docstrings aside) that is a step's name."""
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names
            and id(n) not in docs]


def test_the_engine_and_the_flows_name_no_step() -> None:
    names = {s.name for s in STEPS}
    assert {"ingest", "models", "tokenizer", "pretrain", "general", "control", "finetune",
            "evaluate"} <= names
    found = {(str(p.relative_to(REPO)), line, name) for p in CODE
             for line, name in step_names_in(p, names)}
    found = {f for f in found if (f[0], f[2]) not in ALLOWED}
    assert not found, f"step names outside their packages: {sorted(found)}"


def test_the_cli_knows_every_step() -> None:
    from pipeline.config import STEP_NAMES

    assert tuple(s.name for s in STEPS) == STEP_NAMES


def test_the_check_sees_a_comparison(tmp_path: Path) -> None:
    """The scan is not vacuous: a branch on a step's name is found."""
    code = tmp_path / "engine.py"
    code.write_text('"""Doc naming ingest."""\nif stage == "ingest":\n    pass\n'
                    'match stage:\n    case "pretrain":\n        pass\n')
    assert step_names_in(code, {"ingest", "pretrain"}) == [(2, "ingest"), (5, "pretrain")]
