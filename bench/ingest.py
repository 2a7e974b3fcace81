"""Ingest throughput and near-dedup quality: our ingest stage against datatrove, same input, same
machine, same run.

The corpus is built from the real sample corpora (`dapt samples build` for medical, legal,
finance, general):
  1. our ingest cleans them once (filters, exact and near dedup), so the base holds no
     near-duplicates we know of;
  2. synthetic documents of 3+ real sentences drawn at random from the base fill it to the
     size asked for (more distinct text than the samples hold);
  3. 5% of the documents with 200+ words get a planted copy with 1 word in 100 replaced
     (5-gram Jaccard about 0.9), placed later in the corpus;
  4. it is written as JSONL files of about 32 MB, as a crawl or an export would be.

Both tools run the Gopher quality and repetition filters with the paper's thresholds, MinHash
on word 5-grams with 14 bands x 8 rows, and write Parquet. Ours also normalises, repairs
mojibake, redacts PII and removes exact duplicates (decontamination is off: there is no test
set; language ID is off, as datatrove's pipeline here has none); datatrove runs its reader,
GopherQualityFilter, GopherRepetitionFilter, the four MinHash
stages and a ParquetWriter, 2 workers, with a regex word tokenizer (its fastest; its default
spaCy one was 4x slower here). Each tool runs in a subprocess: its wall time and peak RSS
(of the process or its largest worker) are printed.

    dedup recall     planted pairs with one or both removed, over the pairs that passed the
                     tool's own quality filters
    dedup precision  removed documents whose exact word 5-gram Jaccard with another member of
                     their cluster (the kept one or another removed one) is at least 0.8, over
                     all removed as near-duplicates. datatrove keeps any pair that shares an
                     LSH bucket; we check each candidate's exact 5-gram Jaccard against 0.8.

    python -m bench.ingest --samples /tmp/demo_work/samples --sizes 50,500 --datatrove 50,500
    python -m bench.ingest --samples /tmp/demo_work/samples --sizes 500 --datatrove 500 --one-file
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

SOURCES = {"medical": ["hpo", "icd10cm", "healthnews"], "legal": ["licenses", "rules"],
           "finance": ["bbc_business"], "general": ["news"]}
PART_MB = 32  # corpus files of about this size: the unit of parallelism of both tools


def _gopher_defaults():
    return {"gopher": {}, "repetition": {}}  # the paper's thresholds, as datatrove's defaults


def clean_base(samples: Path, work: Path) -> list[dict]:
    """The sample corpora after our ingest (defaults, no decontamination): no near-dups."""
    import pyarrow.parquet as pq

    from pipeline.config import IngestConfig
    from pipeline.stages import ingest

    out = work / "base"
    if not (out / "eval.parquet").exists():
        out.mkdir(parents=True, exist_ok=True)
        sources = [{"name": f"{d}_{n}", "path": str(samples / d / f"{n}.jsonl"), "id_field": "id"}
                   for d, names in SOURCES.items() for n in names]
        ingest.run(IngestConfig(sources=sources, quality={"gopher": {"min_words": 1,
                                                                     "min_stop_words": None}},
                                decontamination={"enabled": False}, pii={"enabled": False},
                                language={"enabled": False}),
                   {}, out)
    rows = []
    for path in sorted(out.glob("train-*.parquet")) + [out / "eval.parquet"]:
        rows += pq.read_table(path, columns=["doc_id", "text"]).to_pylist()
    return rows


def build_corpus(base: list[dict], size_mb: int, out: Path, seed: int = 0) -> dict[str, str]:
    """Write ``out/part-NN.jsonl`` (about ``size_mb`` MB); returns planted copy id -> source id."""
    rng = random.Random(seed)
    sentences = [s for row in base for s in re.split(r"(?<=[.!?])\s+", row["text"]) if s]
    lengths = [max(3, len(re.split(r"(?<=[.!?])\s+", row["text"]))) for row in base]
    vocab = list({w for s in rng.sample(sentences, 20000) for w in s.split()})
    docs = [{"id": r["doc_id"], "text": r["text"]} for r in base]
    target, size, i = size_mb * 1_000_000, sum(len(d["text"].encode()) for d in docs), 0
    while size < target:
        n = min(rng.choice(lengths), 60)
        text = " ".join(rng.choice(sentences) for _ in range(n))
        docs.append({"id": f"synthetic:{i}", "text": text})
        size += len(text.encode())
        i += 1
    rng.shuffle(docs)
    planted: dict[str, str] = {}
    final: list[dict] = []
    pending: list[tuple[int, dict]] = []
    for pos, doc in enumerate(docs):
        final.append(doc)
        words = doc["text"].split(" ")
        if len(words) >= 200 and rng.random() < 0.05:
            for k in rng.sample(range(len(words)), len(words) // 100):
                words[k] = rng.choice(vocab)
            copy = {"id": f"planted:{len(planted)}", "text": " ".join(words)}
            planted[copy["id"]] = doc["id"]
            pending.append((pos + rng.randint(1, 50_000), copy))
        while pending and pending[0][0] <= pos:
            final.append(pending.pop(0)[1])
        pending.sort(key=lambda p: p[0])
    final += [c for _, c in pending]
    out.mkdir(parents=True, exist_ok=True)
    files = max(1, round(size_mb / PART_MB))
    for k in range(files):
        part = final[k * len(final) // files:(k + 1) * len(final) // files]
        (out / f"part-{k:02d}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in part))
    (out / "planted.json").write_text(json.dumps(planted))
    return planted


def run_ours(corpus: Path, out: Path, workers: int = 2) -> dict:
    """Our stage with its shards on ``workers`` threads, as `dapt run` maps them (Prefect's
    thread pool there; a plain one here, without the flow's fixed start-up cost)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.config import IngestConfig
    from pipeline.stages import ingest

    def threads(fn, jobs):
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda job: fn(*job), jobs))

    out.mkdir(parents=True, exist_ok=True)
    config = IngestConfig(sources=[{"name": "bench", "path": str(corpus / "part-*.jsonl"),
                                    "id_field": "id"}],
                          quality=_gopher_defaults(), decontamination={"enabled": False},
                          language={"enabled": False})  # datatrove's pipeline here has none
    counts = ingest.run(config, {}, out, map_shards=threads).counts
    import duckdb

    con = duckdb.connect()
    pairs = [(d.removeprefix("bench:"), re.search(r"of bench:(\S+)", detail)[1])
             for d, detail in con.execute(
                 f"SELECT doc_id, detail FROM '{out}/excluded.parquet' "
                 "WHERE reason = 'near_duplicate'").fetchall()]
    passed = [r[0].removeprefix("bench:") for r in con.execute(
        f"SELECT doc_id FROM '{out}/excluded.parquet' WHERE stage = 'dedup' UNION ALL "
        f"SELECT doc_id FROM read_parquet(['{out}/train-*.parquet', '{out}/eval.parquet'])"
    ).fetchall()]
    return {"kept": counts["kept"], "pairs": pairs, "passed": passed}


try:  # datatrove is not a dependency of dapt: `make bench-deps` installs it
    from datatrove.utils.word_tokenizers import WordTokenizer
except ImportError:
    WordTokenizer = object


class RegexWords(WordTokenizer):
    """Words by one regex: datatrove's fastest word tokenizer option here (its default for
    English is spaCy's)."""

    def word_tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+|[^\w\s]", text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"[^.!?]+[.!?]*", text)]


def run_datatrove(corpus: Path, out: Path, workers: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
    from datatrove.utils.hashing import HashConfig

    words = RegexWords()
    config = MinhashConfig(hash_config=HashConfig(precision=64, hash_fc="xxhash"), num_buckets=14,
                           hashes_per_bucket=8, n_grams=5)
    read = JsonlReader(str(corpus), glob_pattern="part-*.jsonl", id_key="id")
    files = len(list(corpus.glob("part-*.jsonl")))
    common = {"tasks": files, "workers": workers, "logging_dir": str(out / "logs")}
    LocalPipelineExecutor(pipeline=[
        read, GopherRepetitionFilter(language=words), GopherQualityFilter(language=words),
        JsonlWriter(str(out / "filtered"), compression=None),
        MinhashDedupSignature(output_folder=str(out / "sigs"), config=config, language=words),
    ], **{**common, "logging_dir": str(out / "logs1")}).run()
    LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(
        input_folder=str(out / "sigs"), output_folder=str(out / "buckets"), config=config)],
        tasks=config.num_buckets, workers=workers, logging_dir=str(out / "logs2")).run()
    LocalPipelineExecutor(pipeline=[MinhashDedupCluster(
        input_folder=str(out / "buckets"), output_folder=str(out / "remove_ids"),
        config=config, save_cluster_id=True)], tasks=1, workers=1,
        logging_dir=str(out / "logs3")).run()
    LocalPipelineExecutor(pipeline=[
        JsonlReader(str(out / "filtered"), id_key="id"),
        MinhashDedupFilter(input_folder=str(out / "remove_ids"), load_cluster_ids=True,
                           exclusion_writer=JsonlWriter(str(out / "removed"), compression=None)),
        ParquetWriter(str(out / "output")),
    ], **{**common, "logging_dir": str(out / "logs4")}).run()
    import duckdb

    con = duckdb.connect()
    # Each removed document is paired with the kept document of its cluster.
    pairs = con.execute(f"""
        WITH removed AS (SELECT id, metadata.minhash_cluster_id AS c
                         FROM read_json('{out}/removed/*', format='newline_delimited')),
             kept AS (SELECT metadata.minhash_cluster_id AS c, min(id) AS rep
                      FROM '{out}/output/*.parquet' WHERE metadata.minhash_cluster_id >= 0
                      GROUP BY ALL)
        SELECT r.id, k.rep FROM removed r LEFT JOIN kept k USING (c)""").fetchall()
    n_kept = con.execute(f"SELECT count(*) FROM '{out}/output/*.parquet'").fetchall()[0][0]
    passed = [r[0] for r in con.execute(f"SELECT id FROM read_json('{out}/filtered/*', "
                                        "format='newline_delimited')").fetchall()]
    return {"kept": n_kept, "pairs": pairs, "passed": passed}


def grams(text: str, n: int = 5) -> set:
    """Word n-grams of lower-cased ``\\w+`` words."""
    w = re.findall(r"\w+", text.lower())
    return {tuple(w[i:i + n]) for i in range(max(len(w) - n + 1, 1))}


def jaccard(x: set, y: set) -> float:
    """Exact Jaccard similarity of two n-gram sets."""
    return len(x & y) / max(len(x | y), 1)


def texts(corpus: Path, ids: set[str]) -> dict[str, str]:
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    con.register("wanted", pa.table({"id": sorted(ids)}))
    return dict(con.execute(f"SELECT id, text FROM read_json('{corpus}/part-*.jsonl', "
                            "format='newline_delimited', columns={'id': 'VARCHAR', "
                            "'text': 'VARCHAR'}) JOIN wanted USING (id)").fetchall())


def quality(result: dict, planted: dict[str, str], passed: set[str], corpus: Path) -> dict:
    """``passed``: the documents this tool's filters let through to dedup."""
    pairs = dict(result["pairs"])  # removed -> the document kept for its cluster
    planted = {c: s for c, s in planted.items() if s in passed and c in passed}
    found = {c for c, s in planted.items() if c in pairs or s in pairs}
    clusters: dict[str, list[str]] = {}
    for removed, kept in pairs.items():
        clusters.setdefault(kept or removed, [kept] if kept else []).append(removed)
    text = texts(corpus, {d for members in clusters.values() for d in members})
    shingled = {d: grams(t) for d, t in text.items()}
    correct = 0
    for members in clusters.values():
        for d in members:
            if d not in pairs:
                continue  # the kept one
            if any(o != d and jaccard(shingled.get(d, set()), shingled.get(o, set())) >= 0.8
                   for o in members):
                correct += 1
    return {"recall": len(found) / max(len(planted), 1), "pairs": len(planted),
            "precision": correct / max(len(pairs), 1), "removed": len(pairs)}


def _child(tool: str, corpus: Path, out: Path, workers: int) -> dict:
    """Run one tool in a fresh process: wall time and peak RSS are its own."""
    code = (f"import json, resource; "
            f"from bench.ingest import run_{tool}; from pathlib import Path; "
            f"r = run_{tool}(Path({str(corpus)!r}), Path({str(out)!r})"
            + f", {workers})"
            + "; r['peak_rss_mb'] = max(resource.getrusage(w).ru_maxrss for w in "
            "(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024"
            + f"; Path({str(out / 'result.json')!r}).write_text(json.dumps(r))")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out / "stderr.log", "w") as err:
        # (the child runs in out.parent; PYTHONPATH lets it import bench.ingest from there)
        subprocess.run([sys.executable, "-c", code], check=True, cwd=out.parent,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                       stdout=subprocess.DEVNULL, stderr=err)
    seconds = time.perf_counter() - t0
    result = json.loads((out / "result.json").read_text())
    result.update(seconds=seconds)
    return result


def join_parts(corpus: Path, target: Path) -> Path:
    """``corpus``'s ``part-*.jsonl`` files joined in order into ``target`` (written unless it
    already holds them): the same documents and bytes, one file."""
    import shutil

    parts = sorted(corpus.glob("part-*.jsonl"))
    if not target.exists() or target.stat().st_size != sum(p.stat().st_size for p in parts):
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as fh:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, fh, 1 << 24)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, required=True,
                        help="a directory from `dapt samples build` for all four domains")
    parser.add_argument("--sizes", default="50,500", help="corpus sizes in MB for our ingest")
    parser.add_argument("--datatrove", default="50", help="sizes datatrove also runs on")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dapt-bench-ingest"))
    parser.add_argument("--one-file", action="store_true",
                        help="the same corpus joined into one JSONL file (datatrove reads a "
                        "file as one task; ours cuts it into shards)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = clean_base(args.samples, args.work)
    print(f"clean base: {len(base):,} documents, "
          f"{sum(len(r['text'].encode()) for r in base) / 1e6:.1f} MB")
    dt_sizes = {int(s) for s in args.datatrove.split(",") if s}
    for size in [int(s) for s in args.sizes.split(",")]:
        corpus = args.work / f"corpus-{size}"
        planted = (json.loads((corpus / "planted.json").read_text())
                   if (corpus / "planted.json").exists() else build_corpus(base, size, corpus))
        if args.one_file:  # a corpus directory of one part, so both tools read it as before
            corpus = join_parts(corpus, corpus.with_name(f"{corpus.name}-onefile")
                                / "part-all.jsonl").parent
        mb = sum(p.stat().st_size for p in corpus.glob("part-*.jsonl")) / 1e6
        results = {}
        for tool in ("ours", "datatrove") if size in dt_sizes else ("ours",):
            out = args.work / f"{tool}-{size}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            r = results[tool] = _child(tool, corpus, out, args.workers)
            q = quality(r, planted, set(r["passed"]), corpus)
            print(f"{mb:7.1f} MB  {tool:<10} {r['seconds']:7.1f} s  {mb / r['seconds']:6.2f} MB/s"
                  f"  peak RSS {r['peak_rss_mb']:6.0f} MB  kept {r['kept']:,}  near-dup "
                  f"precision {q['precision']:.3f} recall {q['recall']:.3f} "
                  f"({q['pairs']:,} planted pairs, {q['removed']:,} removed)", flush=True)
        if "datatrove" in results:
            ratio = results["datatrove"]["seconds"] / results["ours"]["seconds"]
            print(f"{mb:7.1f} MB  ratio ours/datatrove: {ratio:.1f}x", flush=True)
        del planted
    os.sync()


if __name__ == "__main__":
    main()
