"""Ingest's decontamination, a global step: exclude training documents that share a word
n-gram with the held-out slice or a test set (each fine-tune task's test split), or that are a
one-word variant of a test set's text (``twins.py``; the held-out slice needs no such check:
its near-twins are held out with it, ``grouping.py``), and for a drop,
retract earlier drops' training documents that share one with a test set added since
(``retrofit``). Training text is hashed one shard at a time; the held-out slice's and the test
sets' n-grams are held (a few % of the corpus)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import IngestConfig
from pipeline.stages.ingest import dedup, twins
from pipeline.stages.ingest.steps import ROW_GROUP
from pipeline.tasks import eval_set_texts


def test_set_hashes(con: duckdb.DuckDBPyConnection, config: IngestConfig
                    ) -> dict[str, np.ndarray]:
    """{"test set NAME": its word n-gram hashes} for every test set decontaminated against."""
    n = config.decontamination.ngram
    sets = {}
    for eval_set in config.decontamination.test_sets:
        texts = eval_set_texts(eval_set)
        con.register("eval_set", pa.table({"ord": list(range(len(texts))), "text": texts},
                                          schema=pa.schema([("ord", pa.int64()),
                                                            ("text", pa.string())])))
        sets[f"test set {eval_set.name}"] = dedup.ngram_hashes(con, "eval_set", n)[1]
        con.unregister("eval_set")
    return sets


def fingerprint(hashes: np.ndarray) -> str:
    """A test set's identity for the drops: a hash of its distinct n-gram hashes."""
    return hashlib.blake2b(np.unique(hashes).tobytes(), digest_size=8).hexdigest()


def retrofit(con: duckdb.DuckDBPyConnection, config: IngestConfig,
             shards: list[tuple[str, str, Path]], sets: dict[str, np.ndarray], out_dir: Path
             ) -> tuple[list[list[str]], pa.Table]:
    """Earlier drops' train shards against test sets added (or changed) since: each shard
    ``(artifact key, file name, path)`` holding a document that shares an n-gram with one is
    written again, without those documents, into this drop as ``retrofit-<key>-<name>``.
    Returns the cumulative shard list with those replaced (key "" for this artifact) and the
    documents retracted (doc_id, source, stage, reason, detail, chars)."""
    n = config.decontamination.ngram
    listing, retracted = [], []
    for key, name, path in shards:
        p = str(path).replace("'", "''")
        con.execute(f"""CREATE OR REPLACE TEMP VIEW earlier_train AS
                        SELECT (file_row_number)::BIGINT AS ord, doc_id, source, text
                        FROM read_parquet('{p}', file_row_number = true)""")
        ords, hashes = dedup.ngram_hashes(con, "earlier_train", n)
        found: dict[int, str] = {}
        for set_name, h in sets.items():
            for o in np.unique(ords[np.isin(hashes, h)]):
                found.setdefault(int(o), f"shares a {n}-word sequence with {set_name} "
                                         "(added after this document's drop)")
        if not found:
            listing.append([key, name])
            continue
        con.register("hit", pa.table({"ord": pa.array(list(found), pa.int64()),
                                      "detail": pa.array(list(found.values()), pa.string())}))
        retracted.append(con.sql("""SELECT t.doc_id, t.source, 'decontaminate' AS stage,
                                           'contaminated' AS reason, h.detail,
                                           length(t.text)::BIGINT AS chars
                                    FROM earlier_train t JOIN hit h USING (ord)
                                    ORDER BY t.ord""").to_arrow_table())
        table = pq.read_table(path)
        keep = np.ones(table.num_rows, bool)
        keep[list(found)] = False
        new_name = f"retrofit-{key}-{name}"
        pq.write_table(table.filter(pa.array(keep)), out_dir / new_name, compression="zstd",
                       row_group_size=ROW_GROUP)
        con.unregister("hit")
        listing.append(["", new_name])
    return listing, (pa.concat_tables([t.cast(RETRACTED_SCHEMA) for t in retracted])
                     if retracted else RETRACTED_SCHEMA.empty_table())


def _short_checks(con: duckdb.DuckDBPyConnection, config: IngestConfig
                  ) -> list[tuple[str, twins.Contained | twins.TwinIndex]]:
    """What the n-gram check misses in short texts: a test set's or held-out text found whole
    inside a training text, and a test set's one-word variants (the held-out slice's are held
    out with it: ``grouping.py``). For a drop, this drop's held-out texts."""
    n = config.decontamination.ngram
    checks: list[tuple[str, twins.Contained | twins.TwinIndex]] = []
    held = con.sql("SELECT text FROM held").to_arrow_table().column("text")
    checks.append(("contains a text of the held-out slice", twins.Contained(held, n)))
    for s in config.decontamination.test_sets:
        texts = eval_set_texts(s)
        checks.append((f"contains a text of test set {s.name}", twins.Contained(texts, n)))
        checks.append((f"a one-word variant of a text of test set {s.name}",
                       twins.TwinIndex(texts)))
    return [(d, c) for d, c in checks
            if (c.by_length if isinstance(c, twins.Contained) else c.size)]


RETRACTED_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()),
                              ("stage", pa.string()), ("reason", pa.string()),
                              ("detail", pa.string()), ("chars", pa.int64())])


def decontaminate(con: duckdb.DuckDBPyConnection, config: IngestConfig, held: str,
                   parts: list[str], earlier_eval: Path | None = None,
                   test_sets: dict[str, np.ndarray] | None = None) -> dict[str, int]:
    """Exclude training documents that share a word n-gram with the held-out slice or a test
    set (each fine-tune task's test split); the first set matched is named in the detail.
    The held-out slice's and the test sets' n-grams are held (a few % of the corpus); training
    text is hashed one shard at a time. ``earlier_eval``: the earlier drops' held-out slice,
    part of the slice checked against."""
    n = config.decontamination.ngram
    con.execute(f"""CREATE TEMP VIEW held AS
                    SELECT ord, text FROM texts JOIN docs USING (ord)
                    WHERE reason IS NULL AND {held}""")
    sets = {"the held-out slice": dedup.ngram_hashes(con, "held", n)[1]}
    if earlier_eval is not None:
        p = str(earlier_eval).replace("'", "''")
        con.execute(f"""CREATE TEMP VIEW held_before AS
                        SELECT (file_row_number)::BIGINT AS ord, text
                        FROM read_parquet('{p}', file_row_number = true)""")
        sets["the held-out slice"] = np.concatenate(
            [sets["the held-out slice"], dedup.ngram_hashes(con, "held_before", n)[1]])
    sets.update(test_set_hashes(con, config) if test_sets is None else test_sets)
    short = _short_checks(con, config)
    found: dict[int, str] = {}
    for shard, part in enumerate(parts):  # one shard's Parquet read at a time
        con.execute(f"""CREATE OR REPLACE TEMP VIEW training AS
                        SELECT d.ord, t.text
                        FROM (SELECT ord AS local, text FROM read_parquet('{part}')) t
                        JOIN docs d ON d.shard = {shard} AND d.local = t.local
                        WHERE d.reason IS NULL AND NOT ({held})""")
        train_ords, train_hashes = dedup.ngram_hashes(con, "training", n)
        for name, hashes in sets.items():
            hit = np.unique(train_ords[np.isin(train_hashes, hashes)])
            found.update((int(o), f"shares a {n}-word sequence with {name}") for o in hit
                         if int(o) not in found)
        if short:
            rows = con.sql("SELECT ord, text FROM training").to_arrow_table()
            ords = rows.column("ord").to_numpy()
            for detail, check in short:
                found.update((int(o), detail) for o in ords[check.hits(rows.column("text"))]
                             if int(o) not in found)
    if found:
        con.register("contaminated", pa.table({"ord": list(found), "detail": list(found.values())},
                                              schema=pa.schema([("ord", pa.int64()),
                                                                ("detail", pa.string())])))
        con.execute("UPDATE docs SET reason = 'contaminated', detail = c.detail "
                    "FROM contaminated c WHERE docs.ord = c.ord")
    return {"decontamination_test_sets": len(sets) - 1}
