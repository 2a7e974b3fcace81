"""The evaluate stage twice on a built run's artifacts: first every model scored (adapted, base,
control), then a second adapted model (another replay share, another seed) with the base model
and the control reused from the first build's score memo (pipeline/stages/evaluate/memo.py).
Prints both stage timings and their ratio, and each build's verdict.

    .venv/bin/python -m bench.evaluate_memo --domain medical --profile cpu \\
        --store /work/runs/s3/artifacts --out /tmp/evm \\
        --shared ingest/KEY tokenizer/KEY models/KEY control/KEY \\
        --first pretrain/KEY finetune/KEY --second pretrain/KEY finetune/KEY

The artifacts are read from ``--store`` (a workdir's ``artifacts/``) by stage and key; the two
builds write to ``--out/evaluate/{first,second}``, siblings, so the second finds the first's
memo as a rerun in one workdir does. The evaluate config is the domain profile's, resolved by
this checkout. A build whose gate fails (``GateFailure``) still wrote its report and memo; the
bench reports it and goes on. Not a test: it scores the real 135M models (about 15 minutes per
model on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline import GateFailure, domains
from pipeline.engine.artifacts import Artifact
from pipeline.stages.evaluate import stage as evaluate


def _artifacts(store: Path, specs: list[str]) -> dict[str, Artifact]:
    out = {}
    for spec in specs:
        stage, key = spec.split("/", 1)
        path = store / stage / key
        if not (path / "manifest.json").is_file():
            raise SystemExit(f"--store {store}: no artifact {spec}")
        out[stage] = Artifact(stage, key, path)
    return out


def build_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of a bench that reads one built evaluate artifact's inputs: --domain,
    --profile, --store and --build (``evaluate/KEY``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--domain", required=True)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--build", required=True, help="evaluate/KEY in --store")
    return parser


def build_inputs(store: Path, build: str) -> dict[str, Artifact]:
    """The inputs of ``build`` (``evaluate/KEY`` in ``store``) by their names in the plan
    (``pretrain[seed1]`` ...)."""
    path = store / build
    if not (path / "manifest.json").is_file():
        raise SystemExit(f"--store {store}: no artifact {build}")
    out = {}
    for name, key in json.loads((path / "manifest.json").read_text())["inputs"].items():
        stage = name.split("[", 1)[0]
        out[name] = Artifact(stage, key, store / stage / key)
    return out


def build(config, inputs: dict[str, Artifact], out_dir: Path) -> tuple[float, dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        evaluate.run(config, inputs, out_dir)
    except GateFailure as exc:
        print(f"{out_dir.name}: gate failed: {exc}", flush=True)
    seconds = time.perf_counter() - start
    return seconds, json.loads((out_dir / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="medical")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shared", nargs="+", required=True)
    parser.add_argument("--first", nargs=2, required=True)
    parser.add_argument("--second", nargs=2, required=True)
    args = parser.parse_args()
    config = domains.get(args.domain).resolve(args.profile).evaluate
    shared = _artifacts(args.store, args.shared)
    rows = {}
    for name in ("first", "second"):
        inputs = {**shared, **_artifacts(args.store, getattr(args, name))}
        seconds, evaluation = build(config, inputs, args.out / "evaluate" / name)
        rows[name] = seconds
        print(f"{name}: {seconds:.0f} s; reused {evaluation.get('reused_scores')}; "
              f"verdict: {evaluation['verdict']['text']}", flush=True)
    print(f"evaluate with base and control reused / all scored: "
          f"{rows['second']:.0f} s / {rows['first']:.0f} s = "
          f"{rows['second'] / rows['first']:.2f}")


if __name__ == "__main__":
    main()
