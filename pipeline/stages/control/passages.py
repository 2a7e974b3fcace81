"""The control's general documents cut into passages, so that it sees document starts at a
rate comparable with the domains' (docs/adaptation.md, "The control run").

A news article is ~700 tokens; a domain's documents can be ~25 (medical: term definitions and
diagnosis names). Packed into sequences, the adapted model then sees thousands of document
starts (the first tokens after EOS, which evaluate scores every test document from) where the
control sees a hundred or two. The control instead trains on passages: each document is cut at
sentence ends (and line breaks) into runs of whole sentences, the sentences whose first
character falls in the same ``PASSAGE_CHARS`` window of the document forming one passage, and
each passage is a document of its own (EOS after it). ``PASSAGE_CHARS`` = 400 (~100 tokens) is
the geometric middle of the shipped domains' document lengths in the ``cpu`` profile (medical
~27 tokens, finance ~450), so the control's document starts per token are within a factor of
about 4 of each domain's instead of 27 below medical's; a passage of a few sentences still
reads as text, not as one-line fragments. Train and dev text are cut alike.

One DuckDB statement over Parquet files, order kept (documents in file order, passages in
document order); no per-document Python loop.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

PASSAGE_CHARS = 400
# a sentence ends at . ! or ? (with closing quotes or brackets) followed by white space, or at
# a line break; the white space stays with the sentence before it, so joining gives the text
SENTENCE_END = r"""([.!?]["')\]]*\s+|\n\s*)"""


def cut(con: duckdb.DuckDBPyConnection, docs: str, out_path: Path,
        chars: int = PASSAGE_CHARS) -> int:
    """Write the passages of the documents ``docs`` (a SQL relation with columns ord, doc_id,
    source, text) to ``out_path`` (Parquet: doc_id ``<doc_id>#<n>``, source, text); returns the
    number of passages."""
    pattern = SENTENCE_END.replace("'", "''")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE passages AS
        WITH split AS (
            SELECT ord, doc_id, source,
                   string_split(regexp_replace(text, '{pattern}', '\\1' || chr(1), 'g'),
                                chr(1)) AS parts
            FROM {docs}),
        sentences AS (
            SELECT ord, doc_id, source, i, parts[i] AS sentence
            FROM (SELECT *, generate_subscripts(parts, 1) AS i FROM split)),
        placed AS (
            SELECT *, coalesce(sum(length(sentence)) OVER (
                PARTITION BY ord ORDER BY i ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                0) // {int(chars)} AS piece
            FROM sentences)
        SELECT ord, piece, doc_id || '#' || piece AS doc_id, source,
               rtrim(string_agg(sentence, '' ORDER BY i)) AS text
        FROM placed GROUP BY ord, piece, doc_id, source""")
    con.execute(f"COPY (SELECT doc_id, source, text FROM passages WHERE length(text) > 0 "
                f"ORDER BY ord, piece) TO '{out_path}' (FORMAT parquet)")
    return con.execute("SELECT count(*) FROM passages WHERE length(text) > 0").fetchall()[0][0]
