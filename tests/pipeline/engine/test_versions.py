"""Code versions follow each stage's import closure: an edit to a file a stage runs changes its
key and the keys downstream, and an edit elsewhere changes nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipeline.engine import versions
from pipeline.stages.steps import STEPS
from tests.e2e_domain import write_test_domain

STAGES = ["ingest", "tokenizer", "pretrain", "finetune", "evaluate"]
STAGE_SPECS = {s.name: s for s in STEPS}


def test_imports_anywhere_in_a_file_are_found() -> None:
    source = '''
import os
from pipeline import kernels
from pipeline.config import IngestConfig, SourceConfig

def later():
    from pipeline.tasks import eval_set_texts
    if True:
        import pipeline.metrics as m
    return ["--module", "pipeline.stages.pretrain.worker", "not.a module", "pipeline"]

class C:
    def m(self):
        from . import quality
        from .dedup import find_sql
        from .. import report
'''
    names = versions.imported_names(source, "pipeline.sub.mod", is_package=False)
    assert {"os", "pipeline", "pipeline.kernels", "pipeline.config",
            "pipeline.config.IngestConfig", "pipeline.tasks", "pipeline.metrics",
            "pipeline.stages.pretrain.worker", "pipeline.sub.quality", "pipeline.sub.dedup",
            "pipeline.sub.dedup.find_sql", "pipeline.report"} <= names
    assert "not.a module" not in names
    # in a package's __init__, "." is the package itself
    assert "pipeline.sub.x" in versions.imported_names("from . import x", "pipeline.sub", True)


@pytest.mark.slow  # every stage's closure
def test_closure_holds_every_project_module_a_stage_imports() -> None:
    """Import each stage in a fresh interpreter: every project module it loads is in its
    closure (the walk misses nothing that runs at import)."""
    probe = ("import importlib, json, sys\n"
             f"mods = {[s.module for s in STAGE_SPECS.values()]!r}\n"
             "out = {}\n"
             "for m in mods:\n"
             "    importlib.import_module(m)\n"
             "    out[m] = sorted(n for n in sys.modules if n.split('.')[0] in "
             f"{versions.PROJECT_PACKAGES!r})\n"
             "print(json.dumps(out))\n")
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], cwd=versions.ROOT,
                                       capture_output=True, text=True, check=True
                                       ).stdout.splitlines()[-1])
    seen: set[str] = set()
    for stage, spec in STAGE_SPECS.items():
        closure = set(versions.import_closure(spec.module))
        new = set(loaded[spec.module]) - seen  # what this stage's import added
        assert new <= closure, (stage, sorted(new - closure))
        seen |= set(loaded[spec.module])
    # the training worker runs as `--module NAME` in a subprocess: covered by name
    closure = versions.import_closure("pipeline.stages.pretrain.stage")
    assert any(m.endswith("worker") for m in closure)


def test_planning_imports_no_torch(tmp_path: Path) -> None:
    probe = ("import sys\n"
             "from pipeline.stages.steps import STEPS\n"
             "print([s.code_version() for s in STEPS])\n"
             "print('torch' in sys.modules, 'deepspeed' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=versions.ROOT, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[-1] == "False False"


def test_unknown_root_module_is_an_error() -> None:
    with pytest.raises(versions.ModuleNotInProject, match="pipeline.nope"):
        versions.import_closure("pipeline.nope")


@pytest.fixture()
def project_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project's packages that ``pipeline.engine.versions`` reads instead of the real
    ones, so a test can edit a file."""
    root = tmp_path / "project"
    for package in versions.PROJECT_PACKAGES:
        shutil.copytree(versions.ROOT / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    monkeypatch.setattr(versions, "ROOT", root)
    return root


def _plan(domain_file: Path, workdir: Path) -> dict[str, str]:
    result = CliRunner().invoke(app, ["plan", "--domain-file", str(domain_file), "--json",
                                      "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["stage"] for r in rows] == STAGES
    assert not any(r["cached"] for r in rows)  # a fresh workdir
    return {r["stage"]: r["key"] for r in rows}


def _edit(root: Path, module: str) -> None:
    path = versions.module_file(module, root)
    assert path is not None and path.is_relative_to(root)
    path.write_text(path.read_text() + "\n# an edit\n")


def _changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [s for s in STAGES if before[s] != after[s]]


@pytest.mark.parametrize(("module", "changed"), [
    # the compiled kernels decide which documents ingest keeps: every key downstream moves
    ("pipeline.stages.ingest.kernels", STAGES),
    # a filter decides the same: the shard step runs the filter list
    pytest.param("pipeline.stages.ingest.filters", STAGES, marks=pytest.mark.slow),
    # the report is written by evaluate alone
    ("pipeline.lifecycle.report", ["evaluate"]),
    # the reader of ingest's output: its readers' keys move, ingest's does not
    pytest.param("pipeline.stages.ingest.artifact",
                 ["tokenizer", "pretrain", "finetune", "evaluate"],
                 marks=pytest.mark.slow),
    # the task split: ingest's decontamination and finetune
    pytest.param("pipeline.tasks", STAGES, marks=pytest.mark.slow),
    # the training worker is started by name, never imported by pretrain
    pytest.param("pipeline.stages.pretrain.worker", ["pretrain", "finetune", "evaluate"],
                 marks=pytest.mark.slow),
    # base-model conversion (its artifact key too)
    pytest.param("pipeline.stages.models.stage", ["tokenizer", "pretrain", "finetune", "evaluate"],
                 marks=pytest.mark.slow),
])
def test_editing_a_module_changes_exactly_the_keys_that_run_it(
        module: str, changed: list[str], project_copy: Path, samples_dir: Path,
        tmp_path: Path) -> None:
    domain_file = write_test_domain(samples_dir, tmp_path)
    before = _plan(domain_file, tmp_path / "work")
    assert _plan(domain_file, tmp_path / "work") == before  # stable
    _edit(project_copy, module)
    assert _changed(before, _plan(domain_file, tmp_path / "work")) == changed


def test_an_edit_outside_every_closure_changes_nothing(project_copy: Path, samples_dir: Path,
                                                       tmp_path: Path) -> None:
    domain_file = write_test_domain(samples_dir, tmp_path)
    before = _plan(domain_file, tmp_path / "work")
    _edit(project_copy, "pipeline.lifecycle.ops")  # dapt lineage/compare/gc: no stage runs it
    _edit(project_copy, "flows.cli")
    assert _plan(domain_file, tmp_path / "work") == before
