"""MinHash signatures: our numba kernel (``ingest/minhash_kernels.py``) against rensa (Rust), on
the shingles of a real corpus, same machine, same run.

Speed: signatures of every document of the corpus (word 5-gram shingles, 14 x 8 = 112
permutations), one thread each, including what it takes to get a numpy array out. Quality: on
the corpus's planted near-duplicate pairs and as many random pairs, the error of each
signature's estimated Jaccard against the exact 5-gram Jaccard (mean, and the RMS error that
sampling alone gives: sqrt(J (1 - J) / 112)).

    python -m bench.minhash --corpus /tmp/dapt-bench-ingest/corpus-50   # from bench/ingest.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import duckdb
import numpy as np

from pipeline.config import NearDupConfig
from pipeline.stages.ingest import dedup, minhash_kernels, text_kernels


def rensa_signatures(hashes: np.ndarray, starts: np.ndarray, num_perm: int, seed: int
                     ) -> np.ndarray:
    from rensa import RMinHash

    offsets = np.append(starts, len(hashes)).astype(np.uint64)
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(hashes.astype(np.uint64), offsets,
                                                           num_perm, seed)
    return np.array(matrix.to_rows(), dtype=np.uint64).reshape(len(starts), num_perm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True,
                        help="a corpus folder of bench/ingest.py (part-*.jsonl, planted.json)")
    args = parser.parse_args()
    con = duckdb.connect()
    table = con.sql(f"SELECT id, text FROM read_json('{args.corpus}/part-*.jsonl', "
                    "format='newline_delimited', columns={'id': 'VARCHAR', 'text': 'VARCHAR'})"
                    ).arrow()
    table = table.read_all() if hasattr(table, "read_all") else table
    config = NearDupConfig()
    num_perm = config.num_bands * config.rows_per_band
    row, h, _ = text_kernels.tokens(table.column("text"))
    ords, shingle = dedup.shingles(row, h, config.ngram)
    starts = dedup.document_starts(ords)
    mb = sum(p.stat().st_size for p in args.corpus.glob("part-*.jsonl")) / 1e6
    print(f"{mb:.1f} MB, {len(starts):,} documents, {len(shingle):,} shingles, "
          f"{num_perm} permutations")
    minhash_kernels.minhash(shingle[:10], starts[:1], num_perm, 0)  # compiled (or loaded) first
    sigs, seconds = {}, {}
    for name, fn in (("dapt kernel", minhash_kernels.minhash), ("rensa", rensa_signatures)):
        t0 = time.perf_counter()
        sigs[name] = fn(shingle, starts, num_perm, config.seed)
        seconds[name] = time.perf_counter() - t0
        print(f"{name:<12} {seconds[name]:6.2f} s  {len(shingle) / seconds[name] / 1e6:6.1f}M "
              f"shingles/s  {sigs[name].nbytes / len(starts):.0f} bytes/document")
    print(f"ratio rensa / dapt kernel: {seconds['rensa'] / seconds['dapt kernel']:.1f}x")

    position = np.full(table.num_rows, -1)  # table row -> signature row (no tokens: none)
    position[ords[starts]] = np.arange(len(starts))
    index = {d: position[i] for i, d in enumerate(table.column("id").to_pylist())}
    planted = json.loads((args.corpus / "planted.json").read_text())
    rng = np.random.default_rng(0)
    pairs = [(index[c], index[s]) for c, s in planted.items()]
    pairs += [tuple(rng.choice(len(starts), 2, replace=False)) for _ in range(len(pairs))]
    grams = {}
    for d in {d for p in pairs for d in p}:
        lo, hi = starts[d], starts[d + 1] if d + 1 < len(starts) else len(shingle)
        grams[d] = set(shingle[lo:hi].tolist())
    exact = np.array([len(grams[a] & grams[b]) / len(grams[a] | grams[b]) for a, b in pairs])
    sampling = np.sqrt(np.mean(exact * (1 - exact) / num_perm))
    for name, sig in sigs.items():
        estimate = np.array([(sig[a] == sig[b]).mean() for a, b in pairs])
        error = estimate - exact
        print(f"{name:<12} Jaccard error on {len(pairs):,} pairs: mean {error.mean():+.4f}, "
              f"RMS {np.sqrt(np.mean(error**2)):.4f} (sampling alone: {sampling:.4f})")


if __name__ == "__main__":
    main()
