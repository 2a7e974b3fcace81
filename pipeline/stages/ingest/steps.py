"""Ingest's global steps, over every shard's output at once: load the shards' documents (one
row each, without the text), drop exact duplicates (first occurrence wins) and near-duplicates
(MinHash-LSH with an exact Jaccard check: one document per cluster is kept), split the held-out
slice by a hash of the document id, write the outputs and count them. Decontamination (training
documents that share a word n-gram with the held-out slice or a test set) is
``contamination.py``.

The tables live in an in-memory DuckDB database that spills to the build directory past
``global_memory_gb`` (a database file would also write every table and update to disk); texts
are read back from the shards' Parquet, one shard at a time, when written out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import QualityGateError
from pipeline.config import IngestConfig
from pipeline.stages.ingest import dedup
from pipeline.stages.ingest.readers import Piece
from pipeline.stages.ingest.shard import copy

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


def open_database(config: IngestConfig, work: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    spill = str(work / "spill").replace("'", "''")
    con.execute(f"SET memory_limit = '{config.global_memory_gb}GB'; "
                f"SET temp_directory = '{spill}'")
    return con


def load_shards(con: duckdb.DuckDBPyConnection, work: Path, num_shards: int) -> list[str]:
    """Tables ``docs`` (one row per document in global order: shard order, then order within
    the shard) and ``modified``, and the view ``texts``; returns the shards' ``docs.parquet``
    paths (SQL-quoted)."""
    parts = [str(work / f"{i:05d}" / "docs.parquet").replace("'", "''")
             for i in range(num_shards)]
    mods = [p.replace("docs.parquet", "modified.parquet") for p in parts]
    if parts:
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
                               source VARCHAR, reason VARCHAR, detail VARCHAR, md5 DOUBLE,
                               chars BIGINT);
            CREATE TABLE modified (ord BIGINT, stage VARCHAR, reason VARCHAR, detail VARCHAR);
            CREATE VIEW texts AS SELECT 0::BIGINT AS ord, ''::VARCHAR AS text WHERE false""")
    return parts


def history_view(con: duckdb.DuckDBPyConnection, index_files: list[Path], bands: bool
                 ) -> None:
    """The view ``hist`` (ord, doc_id, drop, md5[, bands], text) over earlier drops' index
    files, in chain order, with negative ords: an earlier drop's document comes before any of
    this drop's, so it is the one kept when they match."""
    sizes = [pq.ParquetFile(f).metadata.num_rows for f in index_files]
    total, offset, parts = sum(sizes), 0, []
    cols = "doc_id, drop, md5, " + ("bands, " if bands else "") + "text"
    for path, n in zip(index_files, sizes, strict=True):
        p = str(path).replace("'", "''")
        parts.append(f"SELECT (file_row_number + {offset - total})::BIGINT AS ord, {cols} "
                     f"FROM read_parquet('{p}', file_row_number = true)")
        offset += n
    con.execute("CREATE OR REPLACE TEMP VIEW hist AS " + (" UNION ALL ".join(parts) or
                "SELECT 0::BIGINT AS ord WHERE false"))


def exact_dedup_history(con: duckdb.DuckDBPyConnection) -> None:
    """Documents whose MD5 an earlier drop indexed are duplicates of that drop's document."""
    con.execute("""
        UPDATE docs SET reason = 'duplicate',
                        detail = 'duplicate of ' || h.doc_id || ' (drop ' || h.drop || ')'
        FROM (SELECT md5, doc_id, drop FROM hist) h
        WHERE docs.reason IS NULL AND docs.md5 = h.md5""")


def exact_dedup(con: duckdb.DuckDBPyConnection) -> None:
    """Documents with the same MD5 as an earlier one are duplicates of it."""
    con.execute("""
        UPDATE docs SET reason = 'duplicate', detail = 'duplicate of ' || d.first_id
        FROM (SELECT ord AS o, first_value(doc_id) OVER w AS first_id,
                     row_number() OVER w AS rn
              FROM docs WHERE reason IS NULL
              WINDOW w AS (PARTITION BY md5 ORDER BY ord)) d
        WHERE docs.ord = d.o AND d.rn > 1""")


def near_dedup(con: duckdb.DuckDBPyConnection, config: IngestConfig, parts: list[str],
               history: bool = False) -> dict[str, int]:
    """Near-duplicates by the shards' MinHash signatures, each verified by exact Jaccard.
    With ``history`` (the view ``hist``, see ``history_view``), earlier drops' documents that
    share an LSH bucket with one of this drop's join the search, with their negative ords: a
    cluster holding one keeps it, and this drop's members are logged as its duplicates."""
    if not (config.near_dup.enabled and parts):
        return {"near_dup_candidates": 0, "near_dup_verified": 0}
    sigs = [p.replace("docs.parquet", "signatures.parquet") for p in parts]
    query = f"""
        SELECT d.ord, s.bands
        FROM (SELECT {SHARD_SQL} AS shard, ord AS local, bands
              FROM read_parquet({_sql_list(sigs)}, filename = true)) s
        JOIN docs d USING (shard, local) WHERE d.reason IS NULL"""
    texts = lambda ords: _texts_of(con, parts, ords)  # noqa: E731
    if history:
        bands = config.near_dup.num_bands
        # Only the earlier documents in a bucket with one of this drop's: a scan of the
        # earlier band keys, not a bucketing of everything seen.
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE new_bands AS {query};
            CREATE OR REPLACE TEMP TABLE hist_cand AS
            SELECT ord, doc_id, drop, bands FROM hist SEMI JOIN (
                SELECT DISTINCT h.ord
                FROM (SELECT ord, unnest(range({bands})) AS band, unnest(bands) AS key
                      FROM hist) h
                SEMI JOIN (SELECT unnest(range({bands})) AS band, unnest(bands) AS key
                           FROM new_bands) n USING (band, key)) USING (ord)""")
        query = "SELECT ord, bands FROM new_bands UNION ALL SELECT ord, bands FROM hist_cand"

        def texts(ords: np.ndarray) -> Iterator[pa.Table]:
            earlier = ords[ords < 0]
            if len(earlier):
                con.register("wanted", pa.table({"ord": earlier}))
                yield con.sql("SELECT h.ord, h.text FROM hist h SEMI JOIN wanted USING (ord) "
                              "ORDER BY h.ord").to_arrow_table()
                con.unregister("wanted")
            yield from _texts_of(con, parts, ords[ords >= 0])
    found = dedup.find_sql(con, query, texts, config.near_dup)
    mine = found.ords >= 0  # an earlier drop's document is never excluded again
    con.register("near", pa.table({"ord": found.ords[mine].astype(np.int64),
                                   "rep": found.kept_ords[mine].astype(np.int64),
                                   "jaccard": found.jaccard[mine].astype(np.float64)}))
    rep = ("coalesce(d.doc_id, h.doc_id || ' (drop ' || h.drop || ')')" if history
           else "d.doc_id")
    earlier = "LEFT JOIN hist_cand h ON h.ord = n.rep" if history else ""
    con.execute(f"""
        UPDATE docs SET reason = 'near_duplicate', detail = x.detail
        FROM (SELECT n.ord, 'near duplicate of ' || {rep} || ' (Jaccard '
                     || round(n.jaccard, 3)::VARCHAR || ')' AS detail
              FROM near n {"LEFT " if history else ""}JOIN docs d ON d.ord = n.rep {earlier}) x
        WHERE docs.ord = x.ord""")
    con.unregister("near")
    return {"near_dup_candidates": found.candidates, "near_dup_verified": found.verified}


def held_out_sql(config: IngestConfig) -> str:
    """True for a document of the held-out slice: a fixed function of its group (``grp``,
    ``grouping.assign_groups``: the document's id unless grouped) and the seed."""
    return (f"md5_number(grp || ':{config.seed}') % 1000000 "
            f"< {round(config.eval_fraction * 1_000_000)}")


def split(con: duckdb.DuckDBPyConnection, held: str) -> None:
    """Table ``kept``: every document still in, with its split (train or eval)."""
    con.execute(f"""
        CREATE TABLE kept AS
        SELECT ord, doc_id, source, chars, grp,
               CASE WHEN {held} THEN 'eval' ELSE 'train' END AS split
        FROM docs WHERE reason IS NULL;
    """)


def write_train(con: duckdb.DuckDBPyConnection, config: IngestConfig, parts: list[str],
                out_dir: Path) -> int:
    """``train-NNNNN.parquet`` in input order; returns the number of files."""
    return _stream_out(
        con, parts, "SELECT d.local, d.doc_id, d.source FROM docs d JOIN kept k USING (ord) "
        "WHERE d.shard = {shard} AND k.split = 'train' ORDER BY d.local",
        out_dir / "train-{:05d}.parquet", config.num_docs_per_shard)


def write_eval(con: duckdb.DuckDBPyConnection, out_dir: Path,
               earlier_eval: Path | None = None) -> int:
    """Held-out rows (doc_id, source, text, group) in hash order: any prefix is an unbiased
    sample across sources. With ``earlier_eval`` (the previous drop's), the slice is the
    cumulative corpus's: a document's membership is a hash of its group, so it never moves.
    Returns the rows written."""
    if earlier_eval is None:
        copy(con, """SELECT k.doc_id, k.source, t.text, k.grp AS "group"
                     FROM kept k JOIN texts t USING (ord)
                     WHERE k.split = 'eval' ORDER BY md5(k.doc_id)""", out_dir / "eval.parquet")
    else:
        p = str(earlier_eval).replace("'", "''")
        # an eval file written before groups existed: each document was its own group
        group = ('"group"' if "group" in pq.read_schema(earlier_eval).names else "doc_id")
        # md5(text) orders two versions of one id (a rewritten file) the same way every run
        copy(con, f"""SELECT doc_id, source, text, "group" FROM (
                          SELECT doc_id, source, text, {group} AS "group"
                          FROM read_parquet('{p}') UNION ALL
                          SELECT k.doc_id, k.source, t.text, k.grp FROM kept k
                          JOIN texts t USING (ord) WHERE k.split = 'eval')
                      ORDER BY md5(doc_id), md5(text)""", out_dir / "eval.parquet")
    return pq.ParquetFile(out_dir / "eval.parquet").metadata.num_rows


def mark_indexed(con: duckdb.DuckDBPyConnection) -> None:
    """Table ``indexed``: the documents that reach near dedup (every filter passed, no exact
    duplicate), which this drop adds to the domain's index."""
    con.execute("CREATE TABLE indexed AS SELECT ord FROM docs WHERE reason IS NULL")


def write_index(con: duckdb.DuckDBPyConnection, config: IngestConfig, parts: list[str],
                out_dir: Path, drop: int) -> int:
    """``index.parquet``: this drop's part of the index of everything seen, one row per
    document in ``indexed`` (doc_id, drop, md5, LSH band keys, text for the exact Jaccard
    check), in input order. Returns the rows written."""
    bands = ""
    if config.near_dup.enabled and parts:
        sigs = [p.replace("docs.parquet", "signatures.parquet") for p in parts]
        con.execute(f"""
            CREATE TABLE index_bands AS
            SELECT d.ord, s.bands
            FROM (SELECT {SHARD_SQL} AS shard, ord AS local, bands
                  FROM read_parquet({_sql_list(sigs)}, filename = true)) s
            JOIN docs d USING (shard, local) SEMI JOIN indexed USING (ord)""")
        bands = ", b.bands"
    elif config.near_dup.enabled:  # no new document: the column is there for the next drop
        bands = ", NULL::UBIGINT[] AS bands"
    join = "LEFT JOIN index_bands b USING (ord)" if parts and bands else ""
    _stream_out(con, parts, f"SELECT d.local, d.doc_id, {int(drop)}::BIGINT AS drop, d.md5"
                f"{bands} FROM docs d SEMI JOIN indexed USING (ord) {join} "
                "WHERE d.shard = {shard} ORDER BY d.local", out_dir / "index.parquet")
    return int(con.execute("SELECT count(*) FROM indexed").fetchall()[0][0])


def write_excluded(con: duckdb.DuckDBPyConnection, parts: list[str], out_dir: Path) -> None:
    _stream_out(con, parts, f"SELECT d.local, d.doc_id, d.source, {STAGE_SQL} AS stage, "
                "d.reason, d.detail FROM docs d WHERE d.shard = {shard} AND d.reason IS NOT "
                "NULL ORDER BY d.local", out_dir / "excluded.parquet")


def write_modified_and_stats(con: duckdb.DuckDBPyConnection, out_dir: Path) -> None:
    copy(con, """SELECT d.doc_id, d.source, m.stage, m.reason, m.detail, t.text
                 FROM modified m JOIN docs d USING (ord) JOIN texts t USING (ord)
                 ORDER BY ord, m.stage""", out_dir / "modified.parquet")
    copy(con, """SELECT d.source, coalesce(k.split, 'excluded:' || d.reason) AS outcome,
                        count(*) AS docs, sum(d.chars) AS chars
                 FROM docs d LEFT JOIN kept k USING (ord) GROUP BY ALL ORDER BY ALL""",
         out_dir / "stats.parquet")


def count(con: duckdb.DuckDBPyConnection, plan: list[list[Piece]],
          results: list[dict[str, Any]], steps: dict[str, int]) -> dict[str, int]:
    """The manifest's counts: documents in, kept, per split and per exclusion reason, and what
    the shards and the global steps (``steps``) report."""
    counts = dict(con.sql("""SELECT 'docs_in', count(*) FROM docs UNION ALL
        SELECT 'kept', count(*) FROM kept UNION ALL
        SELECT 'train_docs', count(*) FROM kept WHERE split = 'train' UNION ALL
        SELECT 'eval_docs', count(*) FROM kept WHERE split = 'eval' UNION ALL
        SELECT 'excluded', count(*) FROM docs WHERE reason IS NOT NULL UNION ALL
        SELECT 'train_chars', coalesce(sum(chars), 0) FROM kept WHERE split = 'train'
        UNION ALL SELECT 'excluded_' || reason, count(*) FROM docs WHERE reason IS NOT NULL
        GROUP BY reason""").fetchall())
    redacted = summed(r["pii"] for r in results)
    detected = summed(r["language"] for r in results)
    counts.update(files=len({(p.source, p.path) for s in plan for p in s}),
                  ingest_shards=len(plan), **steps,
                  mojibake_repaired=sum(r["mojibake_repaired"] for r in results),
                  pii_docs=con.execute("SELECT count(*) FROM modified WHERE stage = 'pii'"
                                       ).fetchall()[0][0],
                  **{f"pii_{name}": n for name, n in redacted.items()},
                  # ner_docs_scanned + ner_docs_skipped = docs_in (pii.ner_share)
                  **summed(r.get("ner", {}) for r in results),
                  **{f"language_{code}": n for code, n in detected.items()})
    counts = {k: int(v) for k, v in counts.items()}
    if counts["docs_in"] != counts["kept"] + counts["excluded"]:
        raise RuntimeError(f"ingest: documents in != kept + excluded: {counts}")
    if "ner_docs_scanned" in counts and \
            counts["ner_docs_scanned"] + counts["ner_docs_skipped"] != counts["docs_in"]:
        raise RuntimeError(f"ingest: NER's scanned + skipped documents != documents in: {counts}")
    return counts


def write_table(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")


def check_gate(config: IngestConfig, counts: dict[str, int]) -> None:
    if counts["kept"] < config.min_kept_docs or counts["eval_docs"] == 0:
        raise QualityGateError(
            f"ingest: {counts['kept']} of {counts['docs_in']} documents survived filtering "
            f"({counts['eval_docs']} held out); min_kept_docs is {config.min_kept_docs}. "
            f"Exclusions: { {k: v for k, v in counts.items() if k.startswith('excluded_')} }"
            + (f". Nothing was held out: the {counts['kept']} documents form "
               f"{counts['heldout_groups']} held-out group(s) (ingest.held_out; a corpus of one "
               "template is one group: group by id, `held_out: {group_by: id}`, to split it)"
               if counts["eval_docs"] == 0 and counts.get("heldout_groups") else ""))


def by_source(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, int]]:
    rows = con.sql("""SELECT source, count(*) FILTER (WHERE reason IS NULL),
                             count(*) FROM docs GROUP BY source ORDER BY source""").fetchall()
    return {s: {"kept": int(k), "docs_in": int(n)} for s, k, n in rows}


def summed(dicts: Iterable[dict[str, float]]) -> dict[str, Any]:
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
