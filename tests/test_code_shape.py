"""The size rule of the layout (issue 24): no module over 500 lines and no function over 60
lines in pipeline/ and flows/; the config schema (its field descriptions are the reference
text) and numba-compiled kernels aside."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = sorted([*(REPO / "pipeline").rglob("*.py"), *(REPO / "flows").rglob("*.py")])
SCHEMA = REPO / "pipeline/config.py"


def _compiled(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Decorated with numba's ``njit``/``jit`` (``@njit``, ``@numba.njit(cache=True)``)."""
    def name(d: ast.expr) -> str:
        d = d.func if isinstance(d, ast.Call) else d
        return d.attr if isinstance(d, ast.Attribute) else getattr(d, "id", "")
    return any(name(d) in ("njit", "jit") for d in fn.decorator_list)


def long_functions(path: Path, root: Path = REPO, limit: int = 60) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.relative_to(root)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1})"
            for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and n.end_lineno - n.lineno + 1 > limit and not _compiled(n)]


def test_no_module_over_500_lines() -> None:
    long = [f"{p.relative_to(REPO)} ({n})" for p in FILES if p != SCHEMA
            and (n := len(p.read_text(encoding="utf-8").splitlines())) > 500]
    assert not long, long


def test_no_function_over_60_lines() -> None:
    assert len(FILES) > 50
    long = [f for p in FILES for f in long_functions(p)]
    assert not long, long


def test_the_check_counts_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n\n@njit\ndef g():\n{body}\n")
    assert long_functions(tmp_path / "m.py", tmp_path) == ["m.py:1 f (61)"]
