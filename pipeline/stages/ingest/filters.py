"""Ingest's document filters: one class each, applied in ``FILTERS`` order by ``apply``.

A filter sees the documents still in as a view of rows (ord, text) and returns the rows of the
ones it rejects, (ord, reason, detail), as a DuckDB relation or an Arrow table. ``apply`` marks
those documents excluded in the shard's ``docs`` table (so no later filter sees them) and
counts what each filter excluded, as datatrove's blocks count theirs; the reason and detail go
to ``excluded.parquet`` as given.

To add a filter, write one class and put it in ``FILTERS`` where it should run::

    class NoTables(Filter):
        \"\"\"Documents that are mostly pipe-delimited table rows.\"\"\"

        name = "no_tables"

        @classmethod
        def enabled(cls, config: IngestConfig) -> bool:
            return config.quality.gopher.enabled

        def reject(self, con: duckdb.DuckDBPyConnection, view: str) -> Rows:
            return con.sql(f"SELECT ord, 'tables' AS reason, NULL AS detail FROM {view} "
                           "WHERE length(regexp_replace(text, '[^|]', '', 'g')) > 50")

A filter is built once per shard, with the ingest config, and may keep what it measured
besides its rejections as attributes (``Language.detected``). One that also edits the text of
the documents it keeps (C4 removes lines) updates ``docs.text`` in ``reject`` and logs each
edit as a row (ord, stage, reason, detail) of the table ``modified``. The reasons are part of
the output: ``steps.STAGE_SQL`` files a reason it does not list under the stage ``quality``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import IngestConfig
from pipeline.stages.ingest import language, quality

Rows = duckdb.DuckDBPyRelation | pa.Table
VIEW = "source"  # the documents still in, (ord, text), as every filter sees them


class Filter(ABC):
    """One exclusion rule over the documents still in (see the module docstring)."""

    name: ClassVar[str]  # in the shard's counts and the step timings

    def __init__(self, config: IngestConfig) -> None:
        self.config = config

    @classmethod
    def enabled(cls, config: IngestConfig) -> bool:
        """Whether ``config`` turns this filter on (a filter turned off is not built)."""
        return True

    @abstractmethod
    def reject(self, con: duckdb.DuckDBPyConnection, view: str) -> Rows:
        """(ord, reason, detail) of the rows of ``view`` this filter excludes, each once."""


class Length(Filter):
    """Empty text, or fewer than ``min_chars`` or more than ``max_chars`` characters."""

    name = "length"

    def reject(self, con: duckdb.DuckDBPyConnection, view: str) -> Rows:
        c = self.config
        return con.sql(f"""
            SELECT ord, reason, NULL::VARCHAR AS detail FROM (
                SELECT ord, CASE WHEN text IS NULL OR text = '' THEN 'empty'
                                 WHEN length(text) < {c.min_chars} THEN 'too_short'
                                 WHEN length(text) > {c.max_chars} THEN 'too_long' END AS reason
                FROM {view})
            WHERE reason IS NOT NULL""")


class C4(Filter):
    """C4's line filters (``quality.c4_sql``): a kept document loses its failing lines
    (logged as ``c4_lines_removed``); one left with too few sentences, or holding "lorem
    ipsum" or a curly bracket, is excluded."""

    name = "c4"

    @classmethod
    def enabled(cls, config: IngestConfig) -> bool:
        return config.quality.c4.enabled

    def reject(self, con: duckdb.DuckDBPyConnection, view: str) -> Rows:
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE c4 AS {quality.c4_sql(self.config.quality.c4, view)};
            INSERT INTO modified SELECT ord, 'quality', 'c4_lines_removed',
                   'removed ' || (n_lines - n_kept) || ' of ' || n_lines || ' lines'
            FROM c4 WHERE reason IS NULL AND n_kept < n_lines;
            UPDATE docs SET text = c4.c4_text
            FROM c4 WHERE docs.ord = c4.ord AND c4.reason IS NULL AND c4.n_kept < c4.n_lines""")
        rejected = con.sql("SELECT ord, reason, detail FROM c4 WHERE reason IS NOT NULL"
                           ).to_arrow_table()
        con.execute("DROP TABLE c4")
        return rejected


class Gopher(Filter):
    """Gopher's quality heuristics and its line and paragraph repetition checks
    (``quality.CHECKS``), over the features one compiled pass measures."""

    name = "gopher"

    @classmethod
    def enabled(cls, config: IngestConfig) -> bool:
        return quality.reason_sql(config.quality) != ("NULL", "NULL")

    def reject(self, con: duckdb.DuckDBPyConnection, view: str) -> Rows:
        reason, detail = quality.reason_sql(self.config.quality)
        con.register("features", quality.features(con, view, self.config.quality))
        rejected = con.sql(f"""
            SELECT ord, reason, detail
            FROM (SELECT ord, {reason} AS reason, {detail} AS detail FROM features)
            WHERE reason IS NOT NULL""").to_arrow_table()
        con.unregister("features")
        return rejected


class NgramRepetition(Filter):
    """Gopher's word n-gram repetition checks (``quality.ngram_repetition``). Keeps the word
    hashes it made (``words``): MinHash takes those of the documents still in after the last
    filter, rather than hashing their text again."""

    name = "ngram_repetition"
    words: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @classmethod
    def enabled(cls, config: IngestConfig) -> bool:
        rep = config.quality.repetition
        return rep.enabled and bool(rep.max_top_ngram_chars or rep.max_duplicate_ngram_chars)

    def reject(self, con: duckdb.DuckDBPyConnection, view: str) -> Rows:
        self.words = quality.word_hashes(con, view)
        return quality.ngram_repetition(con, view, self.config.quality.repetition, self.words)


class Language(Filter):
    """Documents whose most likely language is not allowed (``language.identify``). Keeps
    the number of judged documents per detected language (``detected``)."""

    name = "language"
    detected: dict[str, int]

    @classmethod
    def enabled(cls, config: IngestConfig) -> bool:
        return config.language.enabled

    def reject(self, con: duckdb.DuckDBPyConnection, view: str) -> Rows:
        rejected, self.detected = language.identify(con, view, self.config.language)
        return rejected


# The order they run in: a document is excluded by the first filter it fails.
FILTERS: tuple[type[Filter], ...] = (Length, C4, Gopher, NgramRepetition, Language)


def build(config: IngestConfig) -> list[Filter]:
    """The filters ``config`` turns on, in order, built for one shard."""
    return [cls(config) for cls in FILTERS if cls.enabled(config)]


def apply(con: duckdb.DuckDBPyConnection, filters: list[Filter],
          lap: Callable[[str], None] = lambda name: None) -> dict[str, int]:
    """Run ``filters`` in order over the view ``VIEW`` of the table ``docs`` (ord, reason,
    detail, text, ...; a document is in while its reason is NULL), marking what each rejects.
    ``lap(name)`` after each. Returns the number of documents each excluded."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW {VIEW} AS "
                "SELECT ord, text FROM docs WHERE reason IS NULL")
    excluded = {}
    for f in filters:
        rows = f.reject(con, VIEW)
        # Materialised before docs changes: a relation over the view would read it again.
        table = rows.to_arrow_table() if isinstance(rows, duckdb.DuckDBPyRelation) else rows
        con.register("rejected", table)
        [(marked,)] = con.execute(
            "UPDATE docs SET reason = r.reason, detail = r.detail FROM rejected r "
            "WHERE docs.ord = r.ord AND docs.reason IS NULL").fetchall()
        con.unregister("rejected")
        if marked != table.num_rows or pc.any(pc.is_null(table.column("reason"))).as_py():
            raise RuntimeError(
                f"ingest filter {f.name!r}: its {table.num_rows} rejected rows must each name "
                f"a document of the view {VIEW!r} once, with a reason ({marked} did)")
        excluded[f.name] = int(marked)
        lap(f.name)
    return excluded
