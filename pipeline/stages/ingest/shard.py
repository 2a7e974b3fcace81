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
from pipeline.stages.ingest import dedup, filters, ner_share, pii, quality, text_kernels
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
    (``readers.shard_files``): read, repair mojibake, normalise, redact PII, then the filters
    (``filters.FILTERS``: length, C4, Gopher, n-gram repetition, language). Writes
    ``docs.parquet`` (ord, doc_id, source, reason, detail, text) and ``modified.parquet`` (ord,
    stage, reason, detail) under ``shard_dir``, and with near dedup on ``signatures.parquet``;
    returns the shard's counts and step seconds.
    Needs no other shard: Prefect maps it over a thread pool or a Dask cluster."""
    lap = Laps()
    con = duckdb.connect()
    raw = _read(con, config, pieces)
    num_docs = raw.num_rows
    lap("read")
    repaired = _load(con, config, raw)
    del raw  # DuckDB holds the text now
    lap("normalise")
    redacted = _redact(con, config) if config.pii.enabled else {}
    ner_docs = ner_share.count(con, "docs", config.pii)  # who NER read, who the share left out
    lap("pii")
    chain = filters.build(config)
    excluded = filters.apply(con, chain, lap)
    shard_dir.mkdir(parents=True, exist_ok=True)
    if config.near_dup.enabled:
        _write_signatures(con, config, chain, num_docs, shard_dir / "signatures.parquet")
        lap("minhash")
    _write_shard(con, shard_dir)
    lap("write_shard")
    con.close()
    detected = next((f.detected for f in chain if isinstance(f, filters.Language)), {})
    return {"mojibake_repaired": repaired, "pii": redacted, "ner": ner_docs,
            "language": detected, "filtered": excluded, "seconds": lap.seconds}


def _read(con: duckdb.DuckDBPyConnection, config: IngestConfig, pieces: list[Piece]
          ) -> pa.Table:
    """The pieces' rows (``readers.RAW_SCHEMA``) in order, each numbered (``ord``)."""
    by_name = {s.name: s for s in config.sources}
    tables = [read_piece(con, by_name[piece.source], piece) for piece in pieces]
    raw = pa.concat_tables(tables) if tables else RAW_SCHEMA.empty_table()
    return raw.append_column("ord", pa.array(np.arange(raw.num_rows, dtype=np.int64)))


def _load(con: duckdb.DuckDBPyConnection, config: IngestConfig, raw: pa.Table) -> int:
    """Tables ``docs`` (ord, doc_id, source, reason, detail, text: the text with mojibake
    repaired and normalised) and ``modified`` (one row per repair). Returns the repairs."""
    text = raw.column("text")
    fixed, repairs = _repair_mojibake(text) if config.fix_mojibake else ([], [])
    if fixed:
        mask = np.zeros(raw.num_rows, bool)
        mask[fixed] = True
        text = pc.replace_with_mask(text.combine_chunks(), pa.array(mask),
                                    pa.array(repairs, text.type))
    raw = raw.set_column(raw.schema.get_field_index("text"), "text",
                         text_kernels.normalise(text))
    con.register("raw", raw)
    con.register("fixed", pa.table({"ord": pa.array(fixed, pa.int64())}))
    con.execute("""
        CREATE TABLE docs AS SELECT ord, doc_id, source, reason, detail, text FROM raw;
        CREATE TABLE modified AS SELECT ord, 'normalise' AS stage,
            'mojibake_repaired' AS reason, 'ftfy re-decoded the text' AS detail FROM fixed""")
    con.unregister("fixed")
    con.unregister("raw")
    return len(fixed)


def _write_signatures(con: duckdb.DuckDBPyConnection, config: IngestConfig,
                      chain: list[filters.Filter], num_docs: int, path: Path) -> None:
    """The MinHash signatures of the documents every filter kept, for the global near dedup
    (it never holds the corpus's text). Their words are those the n-gram filter hashed, when
    it ran: the filters after it only drop documents."""
    words = next((f.words for f in chain if isinstance(f, filters.NgramRepetition)), None)
    if words is None:
        words = quality.word_hashes(con, filters.VIEW)
    alive = np.zeros(num_docs, bool)
    alive[con.execute(f"SELECT ord FROM {filters.VIEW}").fetchnumpy()["ord"]] = True
    keep = alive[words[0]]
    sig_ords, sig = dedup.signatures_of(con, filters.VIEW, config.near_dup,
                                        (words[0][keep], words[1][keep]))
    pq.write_table(dedup.signature_table(sig_ords, sig, config.near_dup), path)


def _write_shard(con: duckdb.DuckDBPyConnection, shard_dir: Path) -> None:
    """``docs.parquet`` with each document's MD5 (exact dedup) and length, and
    ``modified.parquet``. Row i is ord i (the global steps take text by position). LZ4, not
    zstd: the file is read back and deleted, and LZ4 writes it in half the time and reads it
    in a third."""
    copy(con, "SELECT ord, doc_id, source, reason, detail, md5_number(text) AS md5, "
         "length(text) AS chars, text FROM docs ORDER BY ord", shard_dir / "docs.parquet",
         compression="lz4_raw")
    copy(con, "SELECT * FROM modified ORDER BY ord, stage", shard_dir / "modified.parquet")


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
