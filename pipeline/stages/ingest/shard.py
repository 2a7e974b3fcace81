"""Ingest's per-shard step: everything done to one document alone (read, repair mojibake,
normalise, redact PII, the length, C4, Gopher, repetition and language filters), for one shard
of source files or pieces of big ones, with no other shard needed: Prefect maps it over threads
or a Dask cluster."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import IngestConfig
from pipeline.stages.ingest import dedup, kernels, language, pii, quality
from pipeline.stages.ingest.readers import RAW_SCHEMA, Piece, read_piece

# A UTF-8 lead byte read as Latin-1/Windows-1252 (Â-ô), then a continuation byte read the same
# way (U+0080-U+00BF or one of the Windows-1252 punctuation marks): the mark of mojibake.
MOJIBAKE_RE = (r"[\x{00C2}-\x{00F4}][\x{0080}-\x{00BF}\x{0152}\x{0153}\x{0160}\x{0161}"
               r"\x{0178}\x{017D}\x{017E}\x{0192}\x{02C6}\x{02DC}\x{2013}\x{2014}"
               r"\x{2018}-\x{201E}\x{2020}-\x{2022}\x{2026}\x{2030}\x{2039}\x{203A}"
               r"\x{20AC}\x{2122}]")


def prepare_shard(config: IngestConfig, pieces: list[Piece], shard_dir: Path
                  ) -> dict[str, Any]:
    """Everything ingest does to one document alone, for a shard's pieces of source files
    (``readers.shard_files``): read, repair mojibake, normalise, redact PII, the length, C4,
    Gopher, repetition and language filters. Writes
    ``docs.parquet`` (ord, doc_id, source, reason, detail, text) and ``modified.parquet`` (ord,
    stage, reason, detail) under ``shard_dir``; returns the shard's counts and step seconds.
    Needs no other shard: Prefect maps it over a thread pool or a Dask cluster."""
    lap = Laps()
    by_name = {s.name: s for s in config.sources}
    con = duckdb.connect()
    tables = [read_piece(con, by_name[piece.source], piece) for piece in pieces]
    raw = pa.concat_tables(tables) if tables else RAW_SCHEMA.empty_table()
    raw = raw.append_column("ord", pa.array(np.arange(raw.num_rows, dtype=np.int64)))
    num_docs = raw.num_rows
    lap("read")
    text = raw.column("text")
    fixed, repairs = _repair_mojibake(text) if config.fix_mojibake else ([], [])
    if fixed:
        mask = np.zeros(raw.num_rows, bool)
        mask[fixed] = True
        text = pc.replace_with_mask(text.combine_chunks(), pa.array(mask),
                                    pa.array(repairs, text.type))
    raw = raw.set_column(raw.schema.get_field_index("text"), "text", kernels.normalise(text))
    con.register("raw", raw)
    con.register("fixed", pa.table({"ord": pa.array(fixed, pa.int64())}))
    con.execute("""
        CREATE TABLE docs AS SELECT ord, doc_id, source, reason, detail, text FROM raw;
        CREATE TABLE modified AS SELECT ord, 'normalise' AS stage,
            'mojibake_repaired' AS reason, 'ftfy re-decoded the text' AS detail FROM fixed""")
    con.unregister("fixed")
    con.unregister("raw")
    del raw, tables, text  # DuckDB holds the text now
    repaired = len(fixed)
    lap("normalise")
    quality_reason, quality_detail = quality.reason_sql(config.quality)
    redacted = _redact(con, config) if config.pii.enabled else {}
    lap("pii")
    con.execute(f"""
        UPDATE docs SET reason = CASE
            WHEN text IS NULL OR text = '' THEN 'empty'
            WHEN length(text) < {config.min_chars} THEN 'too_short'
            WHEN length(text) > {config.max_chars} THEN 'too_long' END
        WHERE reason IS NULL;
        CREATE TEMP VIEW source AS SELECT ord, text FROM docs WHERE reason IS NULL;
    """)
    if config.quality.c4.enabled:
        con.execute(f"""
            CREATE TEMP TABLE c4 AS {quality.c4_sql(config.quality.c4)};
            UPDATE docs SET reason = c4.reason, detail = c4.detail
            FROM c4 WHERE docs.ord = c4.ord AND c4.reason IS NOT NULL;
            INSERT INTO modified SELECT ord, 'quality', 'c4_lines_removed',
                   'removed ' || (n_lines - n_kept) || ' of ' || n_lines || ' lines'
            FROM c4 WHERE reason IS NULL AND n_kept < n_lines;
            UPDATE docs SET text = c4.c4_text
            FROM c4 WHERE docs.ord = c4.ord AND c4.reason IS NULL AND c4.n_kept < c4.n_lines;
            DROP TABLE c4""")
    con.register("features", quality.features(con, "source", config.quality))
    con.execute(f"""
        UPDATE docs SET reason = q.reason, detail = q.detail
        FROM (SELECT ord, {quality_reason} AS reason, {quality_detail} AS detail
              FROM features) q
        WHERE docs.ord = q.ord AND q.reason IS NOT NULL;
    """)
    con.unregister("features")
    lap("quality")
    # The words of every document still in: for the n-gram filters, then for MinHash.
    words = quality.word_hashes(con, "source")
    con.register("ngram_rep", quality.ngram_repetition(con, "source", config.quality.repetition,
                                                       words))
    con.execute("UPDATE docs SET reason = r.reason, detail = r.detail FROM ngram_rep r "
                "WHERE docs.ord = r.ord")
    lap("ngram_repetition")
    detected: dict[str, int] = {}
    if config.language.enabled:
        rejected, detected = language.identify(con, "source", config.language)
        con.register("rejected", rejected)
        con.execute("UPDATE docs SET reason = r.reason, detail = r.detail FROM rejected r "
                    "WHERE docs.ord = r.ord")
        lap("language")
    shard_dir.mkdir(parents=True, exist_ok=True)
    # What the global steps need besides the text, so they never hold the corpus's text: each
    # document's MD5 (exact dedup) and MinHash signature (near dedup).
    if config.near_dup.enabled:
        alive = np.zeros(num_docs, bool)
        alive[con.execute("SELECT ord FROM source").fetchnumpy()["ord"]] = True
        keep = alive[words[0]]
        sig_ords, sig = dedup.signatures_of(con, "source", config.near_dup,
                                            (words[0][keep], words[1][keep]))
        pq.write_table(dedup.signature_table(sig_ords, sig, config.near_dup),
                       shard_dir / "signatures.parquet")
        lap("minhash")
    # Row i is ord i (the global steps take text by position). LZ4, not zstd: the file is read
    # back and deleted, and LZ4 writes it in half the time and reads it in a third.
    copy(con, "SELECT ord, doc_id, source, reason, detail, md5_number(text) AS md5, "
          "length(text) AS chars, text FROM docs ORDER BY ord", shard_dir / "docs.parquet",
          compression="lz4_raw")
    copy(con, "SELECT * FROM modified ORDER BY ord, stage", shard_dir / "modified.parquet")
    lap("write_shard")
    con.close()
    return {"mojibake_repaired": repaired, "pii": redacted, "language": detected,
            "seconds": lap.seconds}


class Laps:
    """Seconds spent in each step, for the manifest (``extra.seconds``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = round(now - self._t, 3)
        self._t = now


def _repair_mojibake(text: pa.ChunkedArray) -> tuple[list[int], list[str]]:
    """(rows, repaired texts) for the UTF-8 text once decoded as Latin-1 or Windows-1252
    ("donâ€™t", "cafÃ©"). RE2 finds the few rows holding a UTF-8 lead byte's Latin-1 character
    next to a continuation byte's; ftfy re-decodes those alone, and each change is logged."""
    import ftfy

    hits = pc.indices_nonzero(pc.fill_null(pc.match_substring_regex(text, MOJIBAKE_RE), False))
    repaired = [(i, new) for i, old in zip(hits.to_pylist(), pc.take(text, hits).to_pylist(),
                                           strict=True)
                if (new := ftfy.fix_encoding(old)) != old]
    return [i for i, _ in repaired], [t for _, t in repaired]


def _redact(con: duckdb.DuckDBPyConnection, config: IngestConfig) -> dict[str, int]:
    """PII redaction over every document with text (the exclusion log holds none either)."""
    totals = pii.redact(con, "docs", config.pii)
    con.execute("""
        INSERT INTO modified
        SELECT ord, 'pii', 'pii_redacted',
               array_to_string(list_transform(map_entries(pii),
                                              lambda e: e.key || ' ' || e.value), ', ')
        FROM docs WHERE pii IS NOT NULL;
        ALTER TABLE docs DROP COLUMN pii""")
    return totals


def copy(con: duckdb.DuckDBPyConnection, query: str, path: Path, compression: str = "zstd"
          ) -> None:
    con.execute(f"COPY ({query}) TO '{path}' (FORMAT parquet, COMPRESSION {compression})")
