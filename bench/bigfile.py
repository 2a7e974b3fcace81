"""One big JSONL file against the same data in 32 MB files: ingest's speed, cores and peak
memory when a single file holds the whole corpus (issue 16: big files become bounded shards).

The corpus is bench/ingest.py's, built from the real sample corpora (`dapt samples build` for
medical, legal, finance, general): the samples cleaned by our ingest, then documents of 3-60
real sentences drawn from them to the size asked, with unique ids and 5% planted
near-duplicates; written as JSONL files of about 32 MB. The big file is those files joined in
order: the same documents, the same bytes, one file.

Each layout is ingested in a fresh process with the stage's defaults for the work plan
(`shard_mb` 32, `global_memory_gb` 1) and bench/ingest.py's filters (Gopher quality and
repetition at the paper's thresholds, MinHash near dedup, PII, exact dedup; language ID and
decontamination off), shards on 2 threads as `dapt run` maps them. Printed per layout:

    MB/s          corpus MB over the child's wall time (imports included)
    cores         the child's CPU seconds over its wall time (2.0: both cores busy)
    peak RSS      the most resident memory of the child and its descendants together,
                  sampled every 0.1 s, overall and in the shard phase alone
    shards        the work shards the plan made

Goals (issue 16, at >= 2 GB): the single file uses both cores, peaks at <= 2 GB RSS and runs
at >= 0.9x the MB/s of the 32 MB files.

    python -m bench.bigfile --samples dapt-work/samples            # 2,000 MB
    nice -n 15 python -m bench.bigfile --samples dapt-work/samples --mb 200   # a reduced run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
t0 = time.time()
from pipeline.stages import ingest
from pipeline.config import IngestConfig
corpus, out, shard_mb = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
marks = {"start": t0}
def threads(fn, jobs):
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda job: fn(*job), jobs))
    marks["shards_done"] = time.time()
    return results
config = IngestConfig(sources=[{"name": "bench", "path": corpus, "id_field": "id"}],
                      shard_mb=shard_mb, quality={"gopher": {}, "repetition": {}},
                      decontamination={"enabled": False}, language={"enabled": False})
counts = ingest.run(config, {}, out, map_shards=threads).counts
(out / "bench.json").write_text(json.dumps({"counts": counts, "marks": marks}))
"""


def run_layout(corpus_glob: str, out: Path, shard_mb: float) -> dict:
    """Ingest ``corpus_glob`` in a child process, sampling the RSS of its process tree."""
    import psutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.time()
    child = subprocess.Popen([sys.executable, "-c", CHILD, corpus_glob, str(out), str(shard_mb)],
                             cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc = psutil.Process(child.pid)
    samples: list[tuple[float, int]] = []
    cpu = 0.0
    while child.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            samples.append((time.time(), sum(p.memory_info().rss for p in tree)))
            times = proc.cpu_times()
            cpu = times.user + times.system + times.children_user + times.children_system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    wall = time.time() - t0
    if child.returncode != 0:
        raise SystemExit(f"ingest of {corpus_glob} failed (exit {child.returncode})")
    result = json.loads((out / "bench.json").read_text())
    done = result["marks"].get("shards_done", float("inf"))
    return {"wall": wall, "cpu": cpu, "counts": result["counts"],
            "peak": max(r for _, r in samples), "peak_shards": max(
                (r for t, r in samples if t <= done), default=0)}


def main() -> None:
    from bench.ingest import build_corpus, clean_base, join_parts
    from pipeline.config import IngestConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, required=True,
                        help="a directory from `dapt samples build` for all four domains")
    parser.add_argument("--mb", type=int, default=2000, help="corpus size in MB")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dapt-bench-bigfile"))
    parser.add_argument("--unsplit", action="store_true",
                        help="also ingest the big file as one shard, as before issue 16 "
                        "(shard_mb above its size: memory grows with the file)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    parts = args.work / f"parts-{args.mb}"
    if not (parts / "planted.json").exists():
        build_corpus(clean_base(args.samples, args.work), args.mb, parts)
    files = sorted(parts.glob("part-*.jsonl"))
    big = join_parts(parts, args.work / f"single-{args.mb}" / "corpus.jsonl")
    mb = big.stat().st_size / 1e6
    print(f"corpus: {mb:,.1f} MB, {len(files)} files of about 32 MB, and as one file")
    results = {}
    default = IngestConfig.model_fields["shard_mb"].default
    layouts = {"32 MB files": (str(parts / "part-*.jsonl"), args.work / f"out-{args.mb}-parts",
                               default),
               "one file": (str(big), args.work / f"out-{args.mb}-single", default)}
    if args.unsplit:
        layouts["unsplit"] = (str(big), args.work / f"out-{args.mb}-unsplit", 2 * mb)
    for layout, (pattern, out, shard_mb) in layouts.items():
        r = results[layout] = run_layout(pattern, out, shard_mb)
        print(f"{layout:<12} {r['wall']:7.1f} s  {mb / r['wall']:6.2f} MB/s  cores "
              f"{r['cpu'] / r['wall']:4.2f}  peak RSS {r['peak'] / 1e9:5.2f} GB (shard phase "
              f"{r['peak_shards'] / 1e9:5.2f} GB)  shards {r['counts']['ingest_shards']}  "
              f"kept {r['counts']['kept']:,} of {r['counts']['docs_in']:,}", flush=True)
    many, one = results["32 MB files"], results["one file"]
    outs = [{p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}
            for _, out, _ in layouts.values()]
    print(f"one file / 32 MB files: {many['wall'] / one['wall']:.2f}x the MB/s "
          f"(goal >= 0.9); the same output bytes: {all(o == outs[0] for o in outs)}")


if __name__ == "__main__":
    main()
