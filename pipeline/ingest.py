"""Ingest stage: domain sources -> normalised, filtered, deduplicated, split zstd Parquet.

Reads JSONL (optionally gzip or zstd compressed), TXT (one document per file), CSV and Parquet;
repairs mojibake (ftfy, on the documents that show its mark); normalises Unicode (NFC), control
characters and whitespace; redacts PII with typed placeholders (``pipeline/pii.py``, per the
domain's policy); applies the length filter, then the Gopher quality and repetition filters
(``pipeline/quality.py``); drops exact duplicates (first occurrence wins), then near-duplicates
(MinHash-LSH with an exact Jaccard check, ``pipeline/dedup.py``: one document per cluster is
kept); splits a deterministic held-out slice by a hash of the document id; drops training
documents that share a word 13-gram with the held-out slice or a fine-tune test set
(decontamination). All of it is DuckDB SQL, numpy and compiled kernels
(``pipeline/kernels.py``) over Arrow buffers, in shards (``prepare_shard``) and then global
steps over the shards' outputs. Every document that does not reach the output is a row in
``excluded.parquet`` with its reason, and the manifest reconciles ``docs_in = kept +
excluded``.

Outputs: ``train-NNNNN.parquet`` shards in input order and ``eval.parquet`` in hash order (any
prefix is a fair sample across sources), both with columns doc_id, source, text;
``excluded.parquet`` (doc_id, source, stage, reason, detail, text); ``modified.parquet`` (the
same columns: one row per change made to a document, mojibake repair or PII redaction, with the
text after it) and ``stats.parquet`` (per source and outcome: documents and characters).

Run alone: ``python -c "from pipeline import ingest; ..."`` or ``dapt run DOMAIN --only ingest``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from pipeline import QualityGateError, dedup, kernels, language, pii, progress, quality
from pipeline.artifacts import Artifact, Manifest
from pipeline.config import IngestConfig, SourceConfig
from pipeline.domains import is_url, match_files

RAW_SCHEMA = pa.schema(
    [("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string()),
     ("reason", pa.string()), ("detail", pa.string())]
)

# A UTF-8 lead byte read as Latin-1/Windows-1252 (Â-ô), then a continuation byte read the same
# way (U+0080-U+00BF or one of the Windows-1252 punctuation marks): the mark of mojibake.
MOJIBAKE_RE = (r"[\x{00C2}-\x{00F4}][\x{0080}-\x{00BF}\x{0152}\x{0153}\x{0160}\x{0161}"
               r"\x{0178}\x{017D}\x{017E}\x{0192}\x{02C6}\x{02DC}\x{2013}\x{2014}"
               r"\x{2018}-\x{201E}\x{2020}-\x{2022}\x{2026}\x{2030}\x{2039}\x{203A}"
               r"\x{20AC}\x{2122}]")

# The shard of a row read with ``filename = true`` from ``_shards/NNNNN/<file>.parquet``.
SHARD_SQL = "split_part(filename, '/', -2)::INTEGER"

# Which step of the stage excluded a document, from its reason.
STAGE_SQL = """CASE
    WHEN d.reason IN ('malformed_json', 'invalid_utf8', 'missing_text_field', 'unreadable_file')
        THEN 'read'
    WHEN d.reason IN ('empty', 'too_short', 'too_long') THEN 'length'
    WHEN d.reason IN ('duplicate', 'near_duplicate') THEN 'dedup'
    WHEN d.reason = 'contaminated' THEN 'decontaminate'
    WHEN d.reason = 'language' THEN 'language'
    ELSE 'quality' END"""


def infer_format(path: Path, declared: str | None) -> str:
    if declared:
        return declared
    name = path.name.lower()
    for suffix, fmt in ((".jsonl.gz", "jsonl.gz"), (".json.gz", "jsonl.gz"),
                        (".jsonl.zst", "jsonl.zst"), (".json.zst", "jsonl.zst"),
                        (".jsonl", "jsonl"), (".json", "jsonl"), (".txt", "txt"), (".csv", "csv"),
                        (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise ValueError(
        f"cannot infer the format of {path}; set `format` on the source "
        "(jsonl, jsonl.gz, jsonl.zst, txt, csv, parquet)"
    )


def _table(rows: dict[str, list]) -> pa.Table:
    return pa.table(rows, schema=RAW_SCHEMA)


def _with_ids(source: SourceConfig, path: Path, ids: pa.ChunkedArray | None,
              texts: pa.ChunkedArray) -> pa.Table:
    """Rows (doc_id, source, text, reason, detail) from a file's columns, in Arrow: the id is
    ``source:id``, or ``source:file:row`` where the file has no id for the row."""
    n = len(texts)
    doc_ids = pc.binary_join_element_wise(f"{source.name}:{path.name}:",
                                          pa.array(np.arange(n)).cast(pa.string()), "")
    if ids is not None and source.id_field is not None:
        given = pc.binary_join_element_wise(f"{source.name}:", ids, "")
        doc_ids = pc.if_else(pc.fill_null(pc.not_equal(ids, ""), False), given, doc_ids)
    none = pa.nulls(n, pa.string())
    return pa.table([doc_ids, pc.fill_null(none, source.name), texts, none, none],
                    schema=RAW_SCHEMA)


class _UrlPath(str):
    """An fsspec URL with the ``name`` the readers use for a local path."""

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]


def _open_raw(path: Path | _UrlPath) -> BinaryIO:
    if isinstance(path, _UrlPath):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")  # noqa: SIM115 (the caller closes it)


def _zstd_chunks(raw: BinaryIO) -> Iterator[bytes]:
    """The decompressed bytes of every zstd frame in ``raw``; ZstdError when the last frame is
    cut short (zstandard's stream reader and DuckDB both end such a file quietly)."""
    d, fed = zstandard.ZstdDecompressor().decompressobj(), False
    for chunk in iter(lambda: raw.read(1 << 20), b""):
        while chunk:
            yield d.decompress(chunk)
            fed = True
            if not d.eof:
                break
            chunk = d.unused_data
            d, fed = zstandard.ZstdDecompressor().decompressobj(), False
    if fed:
        raise zstandard.ZstdError("the file ends inside a zstd frame (truncated)")


def _zstd_complete(path: Path | _UrlPath) -> bool:
    try:
        with _open_raw(path) as raw:
            for _ in _zstd_chunks(raw):
                pass
    except zstandard.ZstdError:
        return False
    return True


def _lines(path: Path | _UrlPath, fmt: str) -> Iterator[bytes]:
    """The file's lines, decompressed for the formats jsonl.gz and jsonl.zst."""
    with _open_raw(path) as raw:
        if fmt == "jsonl.zst":
            tail = b""
            for chunk in _zstd_chunks(raw):
                *lines, tail = (tail + chunk).split(b"\n")
                yield from (line + b"\n" for line in lines)
            if tail:
                yield tail
        else:
            yield from (gzip.GzipFile(fileobj=raw) if fmt == "jsonl.gz" else raw)


def _read_jsonl_careful(source: SourceConfig, path: Path | _UrlPath, fmt: str) -> pa.Table:
    """Line-by-line reader used only when the fast path rejects a file: quarantines bad lines."""
    rows: dict[str, list] = {k: [] for k in RAW_SCHEMA.names}

    def add(doc_id: str, text: str | None, reason: str | None, detail: str | None) -> None:
        for k, v in zip(RAW_SCHEMA.names, (doc_id, source.name, text, reason, detail),
                        strict=True):
            rows[k].append(v)

    lineno = -1
    try:
        for lineno, line in enumerate(_lines(path, fmt)):
            fallback_id = f"{source.name}:{path.name}:{lineno}"
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                add(fallback_id, None, "invalid_utf8", str(exc)[:200])
                continue
            except json.JSONDecodeError as exc:
                add(fallback_id, None, "malformed_json", str(exc)[:200])
                continue
            if not isinstance(record, dict) or not isinstance(
                record.get(source.text_field), str
            ):
                add(fallback_id, None, "missing_text_field",
                    f"no string field {source.text_field!r}")
                continue
            rid = record.get(source.id_field) if source.id_field else None
            doc_id = f"{source.name}:{rid}" if rid not in (None, "") else fallback_id
            add(doc_id, record[source.text_field], None, None)
    except (OSError, EOFError, zstandard.ZstdError) as exc:  # a truncated .gz or .zst: keep
        # what was read, log the file
        add(f"{source.name}:{path.name}:#{lineno + 1}", None, "unreadable_file",
            f"{type(exc).__name__}: {exc}"[:200])
    return _table(rows)


def read_source_file(con: duckdb.DuckDBPyConnection, source: SourceConfig, path: Path | str
                     ) -> pa.Table:
    """One file (a local path, or an fsspec URL: its filesystem is registered with ``con`` so
    DuckDB reads it) as rows (doc_id, source, text, reason, detail); reason is set for bad
    records."""
    if is_url(path):
        import fsspec

        fs = fsspec.core.url_to_fs(str(path))[0]
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if not con.filesystem_is_registered(protocol):
            con.register_filesystem(fs)
        path = _UrlPath(path)
    else:
        path = Path(path)
    fmt = infer_format(path, source.format)
    text_col, id_col = source.text_field, source.id_field
    p = str(path).replace("'", "''")
    cols = [f'"{text_col}"'] + ([f'"{id_col}"'] if id_col else [])
    if fmt == "jsonl.zst" and not _zstd_complete(path):
        return _read_jsonl_careful(source, path, fmt)  # DuckDB would stop at the cut quietly
    try:
        if fmt.startswith("jsonl"):
            compression = {"jsonl": "none", "jsonl.gz": "gzip", "jsonl.zst": "zstd"}[fmt]
            spec = {text_col: "VARCHAR", **({id_col: "VARCHAR"} if id_col else {})}
            columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in spec.items()) + "}"
            rel = con.sql(
                f"SELECT {', '.join(cols)} FROM read_json('{p}', format='newline_delimited', "
                f"columns={columns}, maximum_object_size=268435456, "
                f"compression='{compression}')"
            )
        elif fmt == "csv":
            rel = con.sql(f"SELECT {', '.join(cols)} FROM read_csv('{p}', header=true, "
                          "all_varchar=true)")
        elif fmt == "parquet":
            rel = con.sql(f"SELECT {', '.join(c + '::VARCHAR' for c in cols)} "
                          f"FROM read_parquet('{p}')")
        else:  # txt: the whole file is one document
            rel = con.sql(f"SELECT content FROM read_text('{p}')")
        table = rel.to_arrow_table()
    except duckdb.Error as exc:
        if fmt.startswith("jsonl"):
            return _read_jsonl_careful(source, path, fmt)
        return _table({"doc_id": [f"{source.name}:{path.name}"], "source": [source.name],
                       "text": [None], "reason": ["unreadable_file"],
                       "detail": [f"{type(exc).__name__}: {exc}"[:300]]})
    return _with_ids(source, path, table.column(1) if id_col and fmt != "txt" else None,
                     table.column(0))


def shard_files(config: IngestConfig) -> list[list[tuple[str, str]]]:
    """The per-document work in shards: source files in source then file order, as (source
    name, path or URL), grouped into runs of about ``shard_mb`` (a bigger file is a shard
    alone, so a folder of small files is not thousands of shards). The output depends on the
    file order only, never on the grouping, on which worker ran a shard or when."""
    limit, shards, current, size = config.shard_mb * 1e6, [], [], 0
    for source in config.sources:
        for path in sorted(match_files(source.path)):
            n = _file_size(path)
            if current and size + n > limit:
                shards.append(current)
                current, size = [], 0
            current.append((source.name, path))
            size += n
    return shards + ([current] if current else [])


def _file_size(path: str) -> int:
    if not is_url(path):
        return os.path.getsize(path)
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    return int(fs.size(root) or 0)


def prepare_shard(config: IngestConfig, files: list[tuple[str, str]], shard_dir: Path
                  ) -> dict[str, Any]:
    """Everything ingest does to one document alone, for a shard's files: read, repair mojibake,
    normalise, redact PII, the length, C4, Gopher, repetition and language filters. Writes
    ``docs.parquet`` (ord, doc_id, source, reason, detail, text) and ``modified.parquet`` (ord,
    stage, reason, detail) under ``shard_dir``; returns the shard's counts and step seconds.
    Needs no other shard: Prefect maps it over a thread pool or a Dask cluster."""
    lap = _Laps()
    by_name = {s.name: s for s in config.sources}
    con = duckdb.connect()
    tables = [read_source_file(con, by_name[name], path) for name, path in files]
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
    _copy(con, "SELECT ord, doc_id, source, reason, detail, md5_number(text) AS md5, "
          "length(text) AS chars, text FROM docs ORDER BY ord", shard_dir / "docs.parquet",
          compression="lz4_raw")
    _copy(con, "SELECT * FROM modified ORDER BY ord, stage", shard_dir / "modified.parquet")
    lap("write_shard")
    con.close()
    return {"mojibake_repaired": repaired, "pii": redacted, "language": detected,
            "seconds": lap.seconds}


def run(config: IngestConfig, inputs: dict[str, Artifact], out_dir: Path,
        map_shards: Callable[[Callable, list[tuple]], list] | None = None) -> Manifest:
    """``config.sources[*].path`` must already be resolved to absolute paths, globs or URLs.

    ``map_shards(fn, jobs)`` runs ``fn(*job)`` for every job and returns the results in job
    order; the default runs them here one by one. The flow passes one that maps Prefect tasks
    over its task runner (threads, or a Dask cluster); the output is the same bytes either way.
    """
    del inputs  # ingest has no upstream artifact: its inputs are the source files
    plan = shard_files(config)
    work = out_dir / "_shards"
    jobs = [(config, files, work / f"{i:05d}") for i, files in enumerate(plan)]
    results = (map_shards or _serial_map)(prepare_shard, jobs)
    lap = _Laps()
    # The global steps keep one row per document without its text, in DuckDB tables that it
    # spills to the build directory past global_memory_gb (an in-memory database: a database
    # file would also write every table and update to disk); texts are read back from the
    # shards' Parquet when written out.
    con = duckdb.connect()
    spill = str(work / "spill").replace("'", "''")
    con.execute(f"SET memory_limit = '{config.global_memory_gb}GB'; "
                f"SET temp_directory = '{spill}'")
    parts = [str(work / f"{i:05d}" / "docs.parquet").replace("'", "''") for i in range(len(jobs))]
    mods = [p.replace("docs.parquet", "modified.parquet") for p in parts]
    if jobs:  # global document order: shard order, then order within the shard
        con.execute(f"""
            CREATE TABLE docs AS
            SELECT (row_number() OVER (ORDER BY shard, local) - 1)::BIGINT AS ord, shard, local,
                   doc_id, source, reason, detail, md5, chars
            FROM (SELECT {SHARD_SQL} AS shard, ord AS local, doc_id, source, reason, detail,
                         md5, chars
                  FROM read_parquet({_sql_list(parts)}, filename = true));
            CREATE TABLE modified AS
            SELECT d.ord, m.stage, m.reason, m.detail
            FROM (SELECT {SHARD_SQL} AS shard, ord AS local, stage, reason, detail
                  FROM read_parquet({_sql_list(mods)}, filename = true)) m
            JOIN docs d USING (shard, local);""")
        con.execute(f"CREATE VIEW texts AS {_texts_sql(parts)}")
    else:
        con.execute("""
            CREATE TABLE docs (ord BIGINT, shard INTEGER, local BIGINT, doc_id VARCHAR,
                               source VARCHAR, reason VARCHAR, detail VARCHAR, md5 UHUGEINT,
                               chars BIGINT);
            CREATE TABLE modified (ord BIGINT, stage VARCHAR, reason VARCHAR, detail VARCHAR);
            CREATE VIEW texts AS SELECT 0::BIGINT AS ord, ''::VARCHAR AS text WHERE false""")
    con.execute("""
        UPDATE docs SET reason = 'duplicate', detail = 'duplicate of ' || d.first_id
        FROM (SELECT ord AS o, first_value(doc_id) OVER w AS first_id,
                     row_number() OVER w AS rn
              FROM docs WHERE reason IS NULL
              WINDOW w AS (PARTITION BY md5 ORDER BY ord)) d
        WHERE docs.ord = d.o AND d.rn > 1""")
    lap("exact_dedup")
    near = {"near_dup_candidates": 0, "near_dup_verified": 0}
    if config.near_dup.enabled and jobs:
        sigs = [p.replace("docs.parquet", "signatures.parquet") for p in parts]
        found = dedup.find_sql(con, f"""
            SELECT d.ord, s.sig, s.bands
            FROM (SELECT {SHARD_SQL} AS shard, ord AS local, sig, bands
                  FROM read_parquet({_sql_list(sigs)}, filename = true)) s
            JOIN docs d USING (shard, local) WHERE d.reason IS NULL""",
            lambda ords: _texts_of(con, parts, ords), config.near_dup)
        near = {"near_dup_candidates": found.candidates, "near_dup_verified": found.verified}
        con.register("near", pa.table({"ord": found.ords.astype(np.int64),
                                       "rep": found.kept_ords.astype(np.int64),
                                       "jaccard": found.jaccard.astype(np.float64)}))
        con.execute("""
            UPDATE docs SET reason = 'near_duplicate', detail = x.detail
            FROM (SELECT n.ord, 'near duplicate of ' || d.doc_id || ' (Jaccard '
                         || round(n.jaccard, 3)::VARCHAR || ')' AS detail
                  FROM near n JOIN docs d ON d.ord = n.rep) x
            WHERE docs.ord = x.ord""")
    held = (f"md5_number(doc_id || ':{config.seed}') % 1000000 "
            f"< {round(config.eval_fraction * 1_000_000)}")
    lap("near_dedup")
    contaminated = (_decontaminate(con, config, held, parts)
                    if config.decontamination.enabled else {})
    lap("decontaminate")
    con.execute(f"""
        CREATE TABLE kept AS
        SELECT ord, doc_id, source, chars, CASE WHEN {held} THEN 'eval' ELSE 'train' END AS split
        FROM docs WHERE reason IS NULL;
    """)
    lap("split")
    train_files = _stream_out(
        con, parts, "SELECT d.local, d.doc_id, d.source FROM docs d JOIN kept k USING (ord) "
        "WHERE d.shard = {shard} AND k.split = 'train' ORDER BY d.local",
        out_dir / "train-{:05d}.parquet", config.num_docs_per_shard)
    lap("write_train")
    # Held-out rows in hash order: any prefix is an unbiased sample across sources.
    _copy(con, """SELECT k.doc_id, k.source, t.text FROM kept k JOIN texts t USING (ord)
                  WHERE k.split = 'eval' ORDER BY md5(k.doc_id)""", out_dir / "eval.parquet")
    lap("write_eval")
    _stream_out(con, parts, f"SELECT d.local, d.doc_id, d.source, {STAGE_SQL} AS stage, "
                "d.reason, d.detail FROM docs d WHERE d.shard = {shard} AND d.reason IS NOT "
                "NULL ORDER BY d.local", out_dir / "excluded.parquet")
    lap("write_excluded")
    _copy(con, """SELECT d.doc_id, d.source, m.stage, m.reason, m.detail, t.text
                  FROM modified m JOIN docs d USING (ord) JOIN texts t USING (ord)
                  ORDER BY ord, m.stage""", out_dir / "modified.parquet")
    _copy(con, """SELECT d.source, coalesce(k.split, 'excluded:' || d.reason) AS outcome,
                         count(*) AS docs, sum(d.chars) AS chars
                  FROM docs d LEFT JOIN kept k USING (ord) GROUP BY ALL ORDER BY ALL""",
          out_dir / "stats.parquet")
    lap("write_modified_stats")
    counts = dict(con.sql("""SELECT 'docs_in', count(*) FROM docs UNION ALL
        SELECT 'kept', count(*) FROM kept UNION ALL
        SELECT 'train_docs', count(*) FROM kept WHERE split = 'train' UNION ALL
        SELECT 'eval_docs', count(*) FROM kept WHERE split = 'eval' UNION ALL
        SELECT 'excluded', count(*) FROM docs WHERE reason IS NOT NULL UNION ALL
        SELECT 'train_chars', coalesce(sum(chars), 0) FROM kept WHERE split = 'train'
        UNION ALL SELECT 'excluded_' || reason, count(*) FROM docs WHERE reason IS NOT NULL
        GROUP BY reason""").fetchall())
    files: dict[str, list[str]] = {s.name: [] for s in config.sources}
    for shard in plan:
        for name, path in shard:
            files[name].append(str(path))
    repaired = sum(r["mojibake_repaired"] for r in results)
    redacted = _summed(r["pii"] for r in results)
    detected = _summed(r["language"] for r in results)
    seconds = {f"shards_{k}": v for k, v in _summed(r["seconds"] for r in results).items()}
    counts.update(files=sum(len(s) for s in plan), ingest_shards=len(plan),
                  train_shards=train_files,
                  **near,
                  **contaminated, mojibake_repaired=repaired,
                  pii_docs=con.execute("SELECT count(*) FROM modified WHERE stage = 'pii'"
                                       ).fetchall()[0][0],
                  **{f"pii_{name}": n for name, n in redacted.items()},
                  **{f"language_{code}": n for code, n in detected.items()})
    assert counts["docs_in"] == counts["kept"] + counts["excluded"], counts
    if counts["kept"] < config.min_kept_docs or counts["eval_docs"] == 0:
        raise QualityGateError(
            f"ingest: {counts['kept']} of {counts['docs_in']} documents survived filtering "
            f"({counts['eval_docs']} held out); min_kept_docs is {config.min_kept_docs}. "
            f"Exclusions: { {k: v for k, v in counts.items() if k.startswith('excluded_')} }"
        )
    by_source = con.sql("""SELECT source, count(*) FILTER (WHERE reason IS NULL),
                                  count(*) FROM docs GROUP BY source ORDER BY source""").fetchall()
    con.close()
    shutil.rmtree(work, ignore_errors=True)
    return Manifest(
        stage="ingest",
        counts={k: int(v) for k, v in counts.items()},
        extra={"sources": {s: {"kept": int(k), "docs_in": int(n)} for s, k, n in by_source},
               "source_names": [s.name for s in config.sources],
               "general_sources": [s.name for s in config.sources if s.general],
               "files": files, "seconds": {**seconds, **lap.seconds}},
    )


def _serial_map(fn: Callable, jobs: list[tuple]) -> list:
    results = []
    with progress.track("ingest: shards", len(jobs), "shards") as bar:
        for job in jobs:
            results.append(fn(*job))
            bar.update()
    return results


def _summed(dicts: Iterable[dict[str, float]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = round(total.get(k, 0) + v, 3)
    return dict(sorted(total.items()))


def _stream_out(con: duckdb.DuckDBPyConnection, parts: list[str], rows_sql: str, path: Path,
                rows_per_file: int | None = None) -> int:
    """Write rows in ord order, shard by shard: ``rows_sql`` (formatted with ``shard``) gives
    one shard's rows to write, their ``local`` position first; the text is taken from that
    shard's Parquet by position. With ``rows_per_file``, ``path`` holds ``{}`` for the file
    number and a new file starts every so many rows (at least one file is written). Returns
    the number of files. Nothing is sorted, and one shard's text is held at a time. Row groups
    are cut at fixed row counts, so the bytes do not depend on how the input was sharded."""
    limit = rows_per_file or 2**62
    schema = con.sql(rows_sql.format(shard=-1)).to_arrow_table().schema.remove(0)
    schema = pa.schema([pa.field(f.name, f.type) for f in schema] + [("text", pa.string())])
    writer, pending, in_file, files = None, [], 0, 0

    def flush(final: bool) -> None:  # write whole row groups of the pending rows
        nonlocal writer, pending, in_file, files
        table = pa.concat_tables(pending) if pending else schema.empty_table()
        while table.num_rows and (final or table.num_rows >= ROW_GROUP
                                  or in_file + table.num_rows >= limit):
            if writer is None:
                writer, in_file, files = (pq.ParquetWriter(str(path).format(files), schema,
                                                           compression="zstd"), 0, files + 1)
            take = min(ROW_GROUP, limit - in_file, table.num_rows)
            writer.write_table(table.slice(0, take).combine_chunks(), row_group_size=ROW_GROUP)
            table, in_file = table.slice(take), in_file + take
            if in_file == limit:
                writer.close()
                writer, in_file = None, 0
        pending = [table] if table.num_rows else []

    for shard, part in enumerate(parts):
        rows = con.sql(rows_sql.format(shard=shard)).to_arrow_table()
        text = _shard_text(part, rows.column("local"))
        pending.append(rows.drop_columns(["local"]).append_column("text", text).cast(schema))
        flush(final=False)
    flush(final=True)
    if writer is None and files == 0:  # no row at all: an empty file with the columns
        writer, files = pq.ParquetWriter(str(path).format(0), schema, compression="zstd"), 1
    if writer is not None:
        writer.close()
    return files


ROW_GROUP = 122_880  # DuckDB's row group size


def _texts_of(con: duckdb.DuckDBPyConnection, parts: list[str], ords: np.ndarray
              ) -> Iterator[pa.Table]:
    """(ord, text) of the documents ``ords`` (sorted), one shard's Parquet at a time."""
    con.register("wanted", pa.table({"ord": ords}))
    where = con.sql("SELECT d.shard, d.local, d.ord FROM docs d SEMI JOIN wanted "
                    "USING (ord) ORDER BY d.ord").to_arrow_table()
    con.unregister("wanted")
    shard = where.column("shard").to_numpy()
    for s in np.unique(shard):
        rows = np.flatnonzero(shard == s)
        yield pa.table({"ord": where.column("ord").to_numpy()[rows],
                        "text": _shard_text(parts[s], where.column("local").take(rows))})


def _shard_text(part: str, local: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """The texts at rows ``local`` of a shard's ``docs.parquet`` (row i is the shard's ord i)."""
    return pq.read_table(part, columns=["text"]).column("text").take(local)


def _texts_sql(parts: list[str]) -> str:
    """(ord, text) of the documents in these shards' ``docs.parquet``. The CASE keeps the
    column nullable, so the Parquet written is the same whether one shard file or several were
    read (DuckDB writes "required" when it knows)."""
    return f"""SELECT d.ord, CASE WHEN t.text IS NULL THEN NULL ELSE t.text END AS text
               FROM (SELECT {SHARD_SQL} AS shard, ord AS local, text
                     FROM read_parquet({_sql_list(parts)}, filename = true)) t
               JOIN docs d USING (shard, local)"""


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join(f"'{p}'" for p in paths) + "]"


class _Laps:
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


def _decontaminate(con: duckdb.DuckDBPyConnection, config: IngestConfig, held: str,
                   parts: list[str]) -> dict[str, int]:
    """Exclude training documents that share a word n-gram with the held-out slice or a test
    set (each fine-tune task's test split); the first set matched is named in the detail.
    The held-out slice's and the test sets' n-grams are held (a few % of the corpus); training
    text is hashed one shard at a time."""
    from pipeline.tasks import eval_set_texts

    n = config.decontamination.ngram
    con.execute(f"""CREATE TEMP VIEW held AS
                    SELECT ord, text FROM texts JOIN docs USING (ord)
                    WHERE reason IS NULL AND {held}""")
    sets = {"the held-out slice": dedup.ngram_hashes(con, "held", n)[1]}
    for eval_set in config.decontamination.test_sets:
        texts = eval_set_texts(eval_set)
        con.register("eval_set", pa.table({"ord": list(range(len(texts))), "text": texts},
                                          schema=pa.schema([("ord", pa.int64()),
                                                            ("text", pa.string())])))
        sets[f"test set {eval_set.name}"] = dedup.ngram_hashes(con, "eval_set", n)[1]
        con.unregister("eval_set")
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
    if found:
        con.register("contaminated", pa.table({"ord": list(found), "detail": list(found.values())},
                                              schema=pa.schema([("ord", pa.int64()),
                                                                ("detail", pa.string())])))
        con.execute("UPDATE docs SET reason = 'contaminated', detail = c.detail "
                    "FROM contaminated c WHERE docs.ord = c.ord")
    return {"decontamination_test_sets": len(sets) - 1}


def _copy(con: duckdb.DuckDBPyConnection, query: str, path: Path, compression: str = "zstd"
          ) -> None:
    con.execute(f"COPY ({query}) TO '{path}' (FORMAT parquet, COMPRESSION {compression})")


# --- reading an ingest artifact (for the stages downstream) -----------------------------------


def train_shards(ingest: Artifact) -> list[Path]:
    return sorted(ingest.path.glob("train-*.parquet"))


def held_out(ingest: Artifact, columns: list[str]) -> dict[str, pa.Table]:
    """The held-out slice split into domain text and general (replay) text, each still in hash
    order, so any prefix is a fair sample. ``columns`` must include ``source``."""
    general = ingest.manifest.extra.get("general_sources", [])
    table = pq.read_table(ingest.path / "eval.parquet", columns=columns)
    is_general = pc.is_in(table.column("source"),
                          value_set=pa.array(sorted(general), pa.string()))
    return {"domain": table.filter(pc.invert(is_general)), "general": table.filter(is_general)}
