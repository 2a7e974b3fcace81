"""Incremental ingest over 5 drops: each drop's cost against ingesting that drop alone, and
cross-drop duplicate removal against a one-shot ingest of the union.

The corpus comes from the real sample corpora (`dapt samples build` for medical, legal,
finance, general), never from invented text:
  1. every sample document is joined with another one (round r pairs document i with
     document i + offset_r of the shuffled list), so the rounds give distinct documents of
     real text (two rounds share half a document at most: 5-gram Jaccard about 1/3), each with
     a unique id; rounds are added until the corpus reaches ``--mb``;
  2. the documents are split into 5 drops in order, each written as JSONL files of about
     ``PART_MB``, in its own folder (``drop-K/``), as a weekly export would land;
  3. drops 2-5 also hold planted duplicates of earlier drops' documents, under new ids:
     ``--exact`` of its size as verbatim copies and ``--near`` with 1 word in 100 replaced by
     another word of the same document (5-gram Jaccard about 0.9).

Then, with our stage (defaults but Gopher's word-count and stop-word floors, with
decontamination and language ID off, as `bench/ingest.py`'s clean base):
  - incremental: drop K is ingested as the next drop of a lineage (only its files read; dedup
    against the index of drops 1..K-1), timed, beside the same drop's files ingested alone;
    goal: incremental <= 1.2x alone for every drop;
  - one-shot: the union of the 5 drops ingested at once. The ids removed as duplicates or
    near-duplicates by the 5 incremental drops are compared with the one-shot's, and the
    planted copies each removed are counted (recall, over the copies that passed the
    per-document filters: a copy of a filtered document is filtered too).

A document the one-shot ingest removes and the drops keep is expected where a near-duplicate
chain is bridged by a later drop: A (drop 1) ~ C (drop 5) ~ B (drop 2) with A and B under the
threshold. One-shot clusters A, B and C together and removes B; drop 2 cannot know C.

Each drop's two runs start with its files in the page cache, after one small warm-up
ingest (the compiled kernels load once); ``--repeat N`` keeps the fastest of N tries of each.

    python -m bench.drops --samples /tmp/demo_work/samples --mb 500
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PART_MB = 32
DROPS = 5
SOURCES = {"medical": ["hpo", "icd10cm", "healthnews"], "legal": ["licenses", "rules"],
           "finance": ["bbc_business"], "general": ["news"]}
OFFSETS = [1, 7, 31, 127, 509, 2039, 8191]  # one per round: a new partner for each document


def sample_docs(samples: Path) -> list[dict]:
    docs = []
    for domain, names in SOURCES.items():
        for name in names:
            with open(samples / domain / f"{name}.jsonl") as fh:
                for line in fh:
                    row = json.loads(line)
                    if isinstance(row.get("text"), str) and row["text"].strip():
                        docs.append({"id": f"{domain}/{name}/{row['id']}", "text": row["text"]})
    return docs


def build(samples: Path, mb: float, out: Path, exact: float, near: float, seed: int = 0
          ) -> dict[str, dict[str, str]]:
    """Write ``out/drop-K/part-NN.jsonl``; returns {"exact"|"near": {planted id: source id}}."""
    rng = random.Random(seed)
    base = sample_docs(samples)
    rng.shuffle(base)
    docs, size, target = [], 0, mb * 1e6
    for r, offset in enumerate(OFFSETS):
        for i, doc in enumerate(base):
            other = base[(i + offset) % len(base)]
            text = doc["text"] + "\n\n" + other["text"]
            docs.append({"id": f"r{r}:{doc['id']}+{other['id']}", "text": text})
            size += len(text.encode())
            if size >= target:
                break
        if size >= target:
            break
    per_drop = len(docs) // DROPS
    planted: dict[str, dict[str, str]] = {"exact": {}, "near": {}}
    shutil.rmtree(out, ignore_errors=True)
    for k in range(DROPS):
        rows = docs[k * per_drop:(k + 1) * per_drop if k < DROPS - 1 else len(docs)]
        earlier = docs[:k * per_drop]
        if earlier:
            plants = []
            for kind, share in (("exact", exact), ("near", near)):
                for src in rng.sample(earlier, int(share * len(rows))):
                    words = src["text"].split(" ")
                    if kind == "near":
                        if len(words) < 100:
                            continue
                        for j in rng.sample(range(len(words)), len(words) // 100):
                            words[j] = rng.choice(words)
                    copy = {"id": f"planted-{kind}:{len(planted[kind])}",
                            "text": " ".join(words)}
                    planted[kind][copy["id"]] = src["id"]
                    plants.append(copy)
            rows = rows + plants
            rng.shuffle(rows)
        folder = out / f"drop-{k + 1}"
        folder.mkdir(parents=True)
        mb_drop = sum(len(r["text"].encode()) for r in rows) / 1e6
        files = max(1, round(mb_drop / PART_MB))
        for f in range(files):
            part = rows[f * len(rows) // files:(f + 1) * len(rows) // files]
            (folder / f"part-{f:02d}.jsonl").write_text(
                "".join(json.dumps(d) + "\n" for d in part))
    (out / "planted.json").write_text(json.dumps(planted))
    return planted


def config(paths: str):
    from pipeline.config import IngestConfig

    # Gopher's word-count and stop-word floors are for web text; the samples' definitions and
    # licence clauses fail them (as in bench/ingest.py's clean base)
    return IngestConfig(sources=[{"name": "bench", "path": paths, "id_field": "id"}],
                        quality={"gopher": {"min_words": 1, "min_stop_words": None}},
                        decontamination={"enabled": False}, language={"enabled": False},
                        min_kept_docs=1)


def threads(workers: int):
    def run(fn, jobs):
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda job: fn(*job), jobs))
    return run


def removed(out: Path) -> tuple[dict[str, str], set[str]]:
    """({doc id: reason} of the documents removed as duplicates or near-duplicates, the ids
    a per-document filter excluded before dedup)."""
    import duckdb

    rows = duckdb.sql(f"SELECT doc_id, reason, stage FROM '{out}/excluded.parquet'").fetchall()
    dups = {d.removeprefix("bench:"): r for d, r, _ in rows
            if r in ("duplicate", "near_duplicate")}
    filtered = {d.removeprefix("bench:") for d, _, stage in rows
                if stage in ("read", "length", "quality", "language")}
    return dups, filtered


def warm_up(corpus: Path, work: Path, workers: int) -> None:
    """One small ingest first, so no timed run pays for loading the compiled kernels."""
    from pipeline.stages import ingest

    src = next((corpus / "drop-1").glob("part-*.jsonl"))
    with open(src) as fh:
        head = [line for _, line in zip(range(2000), fh, strict=False)]
    (work / "warm").mkdir(parents=True, exist_ok=True)
    (work / "warm" / "part.jsonl").write_text("".join(head))
    out = work / "warm-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    ingest.run(config(str(work / "warm" / "part.jsonl")), {}, out, map_shards=threads(workers))
    shutil.rmtree(out)


def read_through(folder: Path) -> None:
    """Read a drop's files once, so both timed runs find them in the page cache."""
    for path in folder.glob("part-*.jsonl"):
        with open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, required=True,
                        help="a directory from `dapt samples build` for all four domains")
    parser.add_argument("--mb", type=float, default=500, help="corpus size over the 5 drops")
    parser.add_argument("--exact", type=float, default=0.02,
                        help="verbatim copies of earlier drops' documents, share of a drop")
    parser.add_argument("--near", type=float, default=0.02,
                        help="near copies (1 word in 100 replaced), share of a drop")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1,
                        help="time each run this many times and keep the fastest")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dapt-bench-drops"))
    args = parser.parse_args()

    from pipeline.domains import source_digest
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.files import match_files
    from pipeline.stages import ingest

    corpus = args.work / "corpus"
    planted = build(args.samples, args.mb, corpus, args.exact, args.near)
    store_root = args.work / "store"
    shutil.rmtree(store_root, ignore_errors=True)
    store = ArtifactStore(store_root)
    digests: dict[str, str] = {}
    warm_up(corpus, args.work, args.workers)
    previous, seen, total = None, {}, {"incr": 0.0, "alone": 0.0}
    filtered: set[str] = set()
    print(f"{'drop':>4} {'MB':>7} {'docs':>8} {'incremental s':>14} {'alone s':>8} "
          f"{'ratio':>6} {'dups removed':>13}", flush=True)
    for k in range(1, DROPS + 1):
        glob = str(corpus / "drop-*" / "part-*.jsonl")
        cfg = config(glob)
        for path in match_files(glob):
            digests.setdefault(str(path), source_digest(path))
        # the glob sees drops 1..k: the later drops are moved in one at a time
        hidden = [corpus / f"drop-{j}" for j in range(k + 1, DROPS + 1)]
        for h in hidden:
            h.rename(h.with_name("." + h.name))
        read_through(corpus / f"drop-{k}")
        try:
            mine = {p: d for p, d in digests.items() if Path(p).exists()}
            # redo_shards: a repeat must not find the first try's shard work
            drops = ingest.Drops(store=store, digests=mine, lineage="bench", redo_shards=True)
            inputs = {"ingest": previous} if previous else {}
            incr = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                art, _ = store.build(stage="ingest", key=f"drop-{k}", config_hash="", code="",
                                     inputs=inputs, force=True,
                                     fn=lambda out, c=cfg, i=inputs, d=drops: ingest.run(
                                         c, i, out, map_shards=threads(args.workers), drops=d))
                incr = min(incr, time.perf_counter() - t0)
        finally:
            for h in hidden:
                h.with_name("." + h.name).rename(h)
        alone = float("inf")
        for _ in range(args.repeat):
            alone_out = args.work / f"alone-{k}"
            shutil.rmtree(alone_out, ignore_errors=True)
            alone_out.mkdir(parents=True)
            t0 = time.perf_counter()
            ingest.run(config(str(corpus / f"drop-{k}" / "part-*.jsonl")), {}, alone_out,
                       map_shards=threads(args.workers))
            alone = min(alone, time.perf_counter() - t0)
            shutil.rmtree(alone_out, ignore_errors=True)
        gone, dropped = removed(art.path)
        seen.update(gone)
        filtered |= dropped
        counts = art.manifest.counts
        mb = sum(p.stat().st_size for p in (corpus / f"drop-{k}").glob("part-*")) / 1e6
        total["incr"] += incr
        total["alone"] += alone
        print(f"{k:>4} {mb:7.1f} {counts['docs_in']:>8,} {incr:14.1f} {alone:8.1f} "
              f"{incr / alone:6.2f} {len(gone):>13,}", flush=True)
        previous = art
    print(f"total: incremental {total['incr']:.1f} s, alone {total['alone']:.1f} s, "
          f"ratio {total['incr'] / total['alone']:.2f} (goal <= 1.2 per drop)")

    union = args.work / "union"
    shutil.rmtree(union, ignore_errors=True)
    union.mkdir(parents=True)
    t0 = time.perf_counter()
    ingest.run(config(str(corpus / "drop-*" / "part-*.jsonl")), {}, union,
               map_shards=threads(args.workers))
    one_shot_s = time.perf_counter() - t0
    once, once_filtered = removed(union)
    for kind, copies in planted.items():
        # a copy of a document a per-document filter excludes is excluded by it too: the
        # recall counts the copies that reached dedup
        live = set(copies) - filtered
        live_once = set(copies) - once_filtered
        print(f"planted {kind:<5} {len(copies):>7,}, {len(live):,} past the filters: removed "
              f"incrementally {len(live & set(seen)):>7,} (recall "
              f"{len(live & set(seen)) / max(len(live), 1):.3f}), by the one-shot ingest "
              f"{len(live_once & set(once)):>7,} (recall "
              f"{len(live_once & set(once)) / max(len(live_once), 1):.3f})")
    print(f"removed as (near-)duplicates: incrementally {len(seen):,}, one-shot {len(once):,}, "
          f"both {len(set(seen) & set(once)):,}; only incrementally "
          f"{len(set(seen) - set(once)):,}, only one-shot {len(set(once) - set(seen)):,} "
          f"(one-shot ingest of the union: {one_shot_s:.1f} s)")


if __name__ == "__main__":
    main()
