"""Code versions: which source files a stage runs, found by reading imports, and their hash.

A stage's artifact key includes the hash of every project module the stage can execute: its
module's import closure inside the project (``pipeline``, ``flows``, ``domains``). The closure
is found by parsing each file with ``ast`` and following every ``import`` and
``from ... import`` anywhere in the file (at the top, inside a function, under ``if``), plus
every quoted string that names a project submodule exactly (a module started by name, as
``--module pipeline.stages.pretrain.worker`` or ``importlib.import_module("pipeline.x")``).
Importing
``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` too, so those are in the closure.
Nothing is imported: planning a fully cached run never loads torch.

The rule errs towards rebuilding: an edit to any file in the closure (a comment included)
changes the key. A module outside the closure (``pipeline/lifecycle/report.py`` for ingest) cannot
change
it. See ``docs/caching.md``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
import threading
from pathlib import Path

# The repository (or site-packages) directory holding the project's top-level packages.
ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("pipeline", "flows", "domains")


class ModuleNotInProject(LookupError):
    """A module named as a stage's root is not a file of the project."""


def module_file(name: str, root: Path | None = None) -> Path | None:
    """The source file of project module ``name`` (``a/b.py`` or ``a/b/__init__.py``), found by
    path alone; None for a module outside the project."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = (root or ROOT).joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


# A string literal naming a project submodule exactly, quotes included: "pipeline.x.y".
_MODULE_STRING = re.compile(
    rf"""(['"])((?:{"|".join(PROJECT_PACKAGES)})(?:\.[A-Za-z_]\w*)+)\1""")
# The fields of a statement that hold statements: imports are statements, so the walk never
# descends into expressions (a tenth of the nodes), which keeps planning fast.
_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


# CPython 3.11.7's ast.parse can fail in two threads at once ("AST constructor recursion depth
# mismatch", seen when `dapt serve` planned two flow runs together): one parse at a time.
_PARSE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1024)
def imported_names(source: str, module: str, is_package: bool) -> frozenset[str]:
    """Every module name ``source`` (the text of ``module``) may import, relative imports
    resolved; names outside the project are kept (the caller drops them). Memoised on the
    text itself, so an edited file is parsed again and each plan parses a file once.

    Module names in string literals are found in the text (a quoted dotted name, in a
    comment too: the rule errs towards rebuilding)."""
    package = module if is_package else module.rpartition(".")[0]
    names = {m.group(2) for m in _MODULE_STRING.finditer(source)}
    with _PARSE_LOCK:
        todo: list[ast.AST] = [ast.parse(source)]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            # ``from a import b``: b may be a submodule of a (or only an attribute)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        for field in _BODIES:
            todo.extend(getattr(node, field, ()))
    return frozenset(names)


def import_closure(*modules: str, root: Path | None = None) -> dict[str, Path]:
    """The project modules ``modules`` import, directly or not, themselves included, as
    {module name: source file}, sorted by name."""
    found: dict[str, Path] = {}
    todo: list[str] = []
    for name in modules:
        if module_file(name, root) is None:
            raise ModuleNotInProject(f"module {name} is not a file under {root or ROOT}")
        todo.append(name)
    while todo:
        name = todo.pop()
        for candidate in _with_parents(name):
            path = module_file(candidate, root)
            if path is None or candidate in found:
                continue
            found[candidate] = path
            is_package = path.name == "__init__.py"
            todo.extend(imported_names(path.read_text(encoding="utf-8"), candidate, is_package))
    return dict(sorted(found.items()))


def code_version(*modules: str, root: Path | None = None) -> str:
    """Hash of the source of ``modules``' import closure inside the project: editing any file
    a stage can run changes its artifacts' keys."""
    h = hashlib.sha256()
    for name, path in import_closure(*modules, root=root).items():
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]
