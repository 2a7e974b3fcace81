"""Ingest from two checkouts of dapt on the same corpus, same machine, same run: the time of
each (alternating, so load from other work on the machine falls on both) and whether their
outputs are the same bytes. For a change meant to keep ingest's behaviour and speed (a
refactor): run it with ``--base`` a checkout of the commit before.

The corpus is a domain's sample sources (``dapt samples build``), ingested with the default
``IngestConfig`` (every filter, exact and near dedup), or with ``--domain-config`` the domain
YAML's own ingest section (``tiny`` profile). Either way the PII NER types run only with
``--ner`` (they take many minutes on 2 cores) and decontamination is off (no test set). Each
run is a fresh subprocess with ``PYTHONPATH`` at its checkout; both checkouts' numba kernels
are compiled before the first timed run.

    python -m bench.ingest_ab --base /tmp/dapt-base --samples /tmp/demo_work/samples
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SOURCES = {"medical": ["hpo", "icd10cm", "healthnews"], "legal": ["licenses", "rules"],
           "finance": ["bbc_business"], "general": ["news"]}

RUN = """
import glob, hashlib, json, os, sys, time
from pathlib import Path
try:  # the layout since the engine/stages move, or the one before it
    from pipeline.stages import ingest
except ImportError:
    from pipeline.stages import ingest
from pipeline.config import PII_NER_TYPES, PII_TYPES, IngestConfig
samples, domain, out, ner = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "1"
names, own = json.loads(sys.argv[5]), sys.argv[6] == "1"
if own:
    from pipeline import domains
    spec = domains.get(domain)
    config = spec.resolve("tiny").ingest
    sources = [s.model_copy(update={"path": domains.resolve_path(s.path, spec, samples.parent)})
               for s in config.sources]
    types = [t for t in config.pii.types if ner or t not in PII_NER_TYPES]
else:
    config = IngestConfig(
        sources=[{"name": n, "path": str(samples / domain / f"{n}.jsonl")} for n in names])
    sources = config.sources
    types = [t for t in PII_TYPES if ner or t not in PII_NER_TYPES]
config = config.model_copy(update={
    "sources": sources, "pii": config.pii.model_copy(update={"types": types}),
    "decontamination": config.decontamination.model_copy(update={"enabled": False})})
out.mkdir(parents=True)
start = time.perf_counter()
manifest = ingest.run(config, {}, out)
seconds = time.perf_counter() - start
files = sorted(p.name for p in out.glob("*.parquet"))
mb = sum(os.path.getsize(f) for s in config.sources for f in glob.glob(s.path)) / 1e6
print(json.dumps({"seconds": seconds, "counts": manifest.counts, "mb": mb,
                  "steps": manifest.extra["seconds"],
                  "sha256": {f: hashlib.sha256((out / f).read_bytes()).hexdigest()
                             for f in files}}))
"""

WARM = """
try:
    from pipeline.stages.ingest import kernels
except ImportError:
    from pipeline.stages.ingest import kernels
kernels.warm()
"""


def run_once(root: Path, samples: Path, domain: str, out: Path, ner: bool, own: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(samples), domain, str(out), "1" if ner else "0",
         json.dumps(SOURCES[domain]), "1" if own else "0"],
        cwd=root, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ingest from {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the checkout to compare to")
    parser.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the checkout measured (default: this one)")
    parser.add_argument("--samples", type=Path, required=True, help="<workdir>/samples")
    parser.add_argument("--domain", default="medical", choices=sorted(SOURCES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ner", action="store_true", help="the PII NER types too (slow)")
    parser.add_argument("--domain-config", action="store_true",
                        help="the domain YAML's ingest section instead of the defaults")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dapt-bench-ingest-ab"))
    args = parser.parse_args()
    missing = [n for n in SOURCES[args.domain]
               if not (args.samples / args.domain / f"{n}.jsonl").exists()]
    if missing:
        raise SystemExit(f"--samples {args.samples}: no {args.domain}/{missing[0]}.jsonl "
                         "(run `dapt samples build --workdir ...` first)")
    trees = {"base": args.base.resolve(), "new": args.new.resolve()}
    for root in trees.values():  # compile each checkout's kernels into its own cache
        subprocess.run([sys.executable, "-c", WARM], cwd=root, check=True,
                       env={**os.environ, "PYTHONPATH": str(root)})
    seconds: dict[str, list[float]] = {name: [] for name in trees}
    steps: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    results: dict[str, dict] = {}
    for r in range(args.rounds):
        for name in (("base", "new") if r % 2 == 0 else ("new", "base")):
            out = args.work / f"{name}-{r}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            results[name] = run_once(trees[name], args.samples, args.domain, out, args.ner,
                                     args.domain_config)
            seconds[name].append(results[name]["seconds"])
            for step, t in results[name]["steps"].items():
                steps[name].setdefault(step, []).append(t)
            mb = results[name]["mb"]
            print(f"round {r} {name}: {results[name]['seconds']:.1f} s "
                  f"({mb / results[name]['seconds']:.2f} MB/s)", flush=True)
    base, new = (statistics.median(seconds[n]) for n in ("base", "new"))
    print(f"{args.domain}: {mb:.1f} MB, {results['new']['counts']['docs_in']:,} documents, "
          f"{results['new']['counts']['kept']:,} kept")
    print(f"median seconds: base {base:.1f}, new {new:.1f}; new/base time {new / base:.3f} "
          f"(MB/s {mb / base:.2f} -> {mb / new:.2f})")
    print("median seconds per step (shards_*: summed over shards; a step either side only "
          "is a renamed one):")
    for step in sorted(set(steps["base"]) | set(steps["new"])):
        b, n = (f"{statistics.median(steps[t][step]):7.2f}" if step in steps[t] else "      -"
                for t in ("base", "new"))
        print(f"  {step:32s} base {b}  new {n}")
    same = results["base"]["sha256"] == results["new"]["sha256"]
    print(f"outputs: {'the same bytes' if same else 'DIFFERENT'} "
          f"({len(results['new']['sha256'])} Parquet files)")
    if not same:
        for f in sorted(set(results["base"]["sha256"]) | set(results["new"]["sha256"])):
            if results["base"]["sha256"].get(f) != results["new"]["sha256"].get(f):
                print(f"  differs: {f}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
