"""Document quality filters: Gopher's quality heuristics and repetition filters (Rae et al.
2021, "Scaling Language Models", appendix A), as datatrove implements them.

Each filter is a threshold in ``QualityConfig`` (``null`` turns one off) and one branch of a SQL
``CASE``: the first filter a document fails is its exclusion reason (``gopher_<field>`` or
``repetition_<field>``, e.g. ``gopher_min_words``), with the measured value and the threshold
in ``detail``. The features and the n-gram counts are computed once per document by the
compiled kernels in ``pipeline/stages/ingest/gopher_kernels.py`` (one pass over the text's UTF-8
buffer; no per-document Python); the CASE runs in DuckDB over their Arrow table.

    words       whitespace-separated tokens
    lines       non-empty lines
    paragraphs  blocks separated by blank lines
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from pipeline.config import C4Config, QualityConfig, RepetitionConfig
from pipeline.stages.ingest import gopher_kernels, kernels, text_kernels

# (config field, feature, comparison): a document fails when `feature comparison threshold`.
CHECKS: tuple[tuple[str, str, str, str], ...] = (
    ("gopher", "min_words", "n_words", "<"),
    ("gopher", "max_words", "n_words", ">"),
    ("gopher", "min_mean_word_length", "mean_word_length", "<"),
    ("gopher", "max_mean_word_length", "mean_word_length", ">"),
    ("gopher", "max_symbol_word_ratio", "hash_ratio", ">"),
    ("gopher", "max_symbol_word_ratio", "ellipsis_ratio", ">"),
    ("gopher", "max_ellipsis_lines", "ellipsis_lines", ">"),
    ("gopher", "max_bullet_lines", "bullet_lines", ">"),
    ("gopher", "min_alpha_words", "alpha_words", "<"),
    ("gopher", "min_stop_words", "stop_words", "<"),
    ("repetition", "max_duplicate_lines", "duplicate_lines", ">"),
    ("repetition", "max_duplicate_paragraphs", "duplicate_paragraphs", ">"),
    ("repetition", "max_duplicate_line_chars", "duplicate_line_chars", ">"),
    ("repetition", "max_duplicate_paragraph_chars", "duplicate_paragraph_chars", ">"),
)


def reason_sql(config: QualityConfig) -> tuple[str, str]:
    """(reason, detail) SQL expressions over the features; NULL reason: the document passes."""
    reasons, details = [], []
    for group, field, feature, op in CHECKS:
        section = getattr(config, group)
        threshold = getattr(section, field)
        if not section.enabled or threshold is None:
            continue
        test = f"{feature} {op} {float(threshold)!r}"
        name = f"{group}_{field}"
        reasons.append(f"WHEN {test} THEN '{name}'")
        details.append(f"WHEN {test} THEN '{feature} ' || round({feature}, 4)::VARCHAR || "
                       f"' {op} {threshold}'")
    if not reasons:
        return "NULL", "NULL"
    return (f"CASE {' '.join(reasons)} END", f"CASE {' '.join(details)} END")


INTEGER_FEATURES = ("n_words", "n_lines", "n_chars", "stop_words")


def features(con: duckdb.DuckDBPyConnection, source: str, config: QualityConfig) -> pa.Table:
    """The features ``reason_sql`` tests, one row per document of ``source`` (ord, text):
    ``gopher_kernels.py`` computes them in one compiled pass over the text."""
    table = con.sql(f"SELECT ord, text FROM {source}").to_arrow_table()
    values = gopher_kernels.gopher_features(table.column("text"), config.gopher.stop_words)
    columns = {"ord": table.column("ord")}
    for name, x in values.items():
        columns[name] = (pa.array(x.astype(np.int64)) if name in INTEGER_FEATURES
                         else pa.array(x, mask=np.isnan(x)))
    return pa.table(columns)


# --- C4 line filters ---------------------------------------------------------------------------

POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
          "use cookies")
CITATION_RE = r"\[\d+\]|\[edit\]|\[citation needed\]"
SENTENCE_END = r"[.!?]+[\"'']?(\s|$)"  # in SQL: '' is a quote


def c4_sql(config: C4Config, source: str = "source") -> str:
    """Per document of the view ``source`` (ord, text): the text with failing lines removed
    (``c4_text``), lines before and after, and the exclusion reason (NULL: it stays). Blank
    lines (paragraph breaks) are kept; runs of them collapse to one."""
    line = f"trim(regexp_replace(l, '{CITATION_RE}', '', 'g'))" if config.remove_citations \
        else "l"
    fails = []
    if config.terminal_punctuation:
        fails.append("NOT regexp_matches(l, '[.!?\"'']$') OR suffix(l, '...') OR suffix(l, '…')")
    if config.min_words_per_line:
        fails.append(f"len(string_split_regex(l, '\\s+')) < {config.min_words_per_line}")
    if config.max_word_length:
        fails.append(f"list_max(list_transform(string_split_regex(l, '\\s+'), "
                     f"lambda w: length(w))) > {config.max_word_length}")
    if config.javascript_lines:
        fails.append("contains(lower(l), 'javascript')")
    if config.policy_lines:
        fails += [f"contains(lower(l), '{p}')" for p in POLICY]
    keep = f"l = '' OR NOT ({' OR '.join(fails)})" if fails else "true"
    reasons = []
    if config.lorem_ipsum:
        reasons.append("WHEN contains(lower(text), 'lorem ipsum') THEN 'c4_lorem_ipsum'")
    if config.curly_bracket:
        reasons.append("WHEN contains(text, '{') THEN 'c4_curly_bracket'")
    if config.min_sentences:
        reasons.append(f"WHEN len(regexp_extract_all(c4_text, '{SENTENCE_END}')) < "
                       f"{config.min_sentences} THEN 'c4_min_sentences'")
    reason = f"CASE {' '.join(reasons)} END" if reasons else "NULL"
    return f"""
        SELECT ord, c4_text, n_lines, n_kept, {reason} AS reason,
               CASE WHEN {reason} = 'c4_min_sentences' THEN
                   len(regexp_extract_all(c4_text, '{SENTENCE_END}'))::VARCHAR
                   || ' sentences left < {config.min_sentences}' END AS detail
        FROM (
            SELECT ord, text, len(list_filter(lines, lambda l: l <> '')) AS n_lines,
                   len(list_filter(kept, lambda l: l <> '')) AS n_kept,
                   trim(regexp_replace(array_to_string(kept, chr(10)), '\\n{{3,}}',
                                       chr(10) || chr(10), 'g')) AS c4_text
            FROM (
                SELECT ord, text, lines,
                       list_filter(list_transform(lines, lambda l: {line}),
                                   lambda l: {keep}) AS kept
                FROM (SELECT ord, text, string_split(text, chr(10)) AS lines FROM {source})))
    """


# --- Gopher n-gram repetition ------------------------------------------------------------------


def window_hashes(h: np.ndarray, doc: np.ndarray, n: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Start positions of the word n-grams that lie inside one document, and their hashes: a
    polynomial over each window of word hashes ``h`` (``doc``: each word's document), with
    odd coefficients drawn from ``seed``."""
    m = len(h) - n + 1
    if m <= 0:
        return np.array([], np.int64), np.array([], np.uint64)
    coef = kernels.odd_coefficients(n, seed)
    g = np.zeros(m, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            g += h[k:k + m] * coef[k]
    start = np.flatnonzero(doc[:m] == doc[n - 1:])
    return start, g[start]


def word_hashes(con: duckdb.DuckDBPyConnection, source: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(document ord, uint64 hash, characters) of every word of the rows (ord, text) of
    ``source``, in document and word order: lower-cased runs of word characters (Python's
    ``\\w``), as the n-gram filters, near-dedup and decontamination use them."""
    table = con.sql(f"SELECT ord, text FROM {source}").to_arrow_table()
    row, h, lens = text_kernels.tokens(table.column("text"))
    ords = table.column("ord").to_numpy()[row]
    if len(ords) and (np.diff(ords) < 0).any():  # ord order, words in order within each
        order = np.argsort(ords, kind="stable")
        ords, h, lens = ords[order], h[order], lens[order]
    return ords, h, lens


def ngram_repetition(con: duckdb.DuckDBPyConnection, source: str, config: RepetitionConfig,
                     words: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                     ) -> pa.Table:
    """Gopher's n-gram repetition filters over the rows (ord, text) of ``source``:

    - top n-gram (n = 2, 3, 4): the characters of the most frequent word n-gram (its count times
      its length), as a share of all word characters;
    - duplicate n-grams (n = 5..10): the share of word characters inside any n-gram that occurs
      more than once. It can only fall as n grows, so a document under every later
      threshold is not measured again.

    ``gopher_kernels.py`` counts each document's n-grams in a hash table of its own. Returns
    (ord, reason, detail) for the documents that fail, the first check in that order.
    ``words``: ``word_hashes(con, source)``, when the caller already has them."""
    schema = pa.schema([("ord", pa.int64()), ("reason", pa.string()), ("detail", pa.string())])
    checks = [("top", n, t) for n, t in sorted((config.max_top_ngram_chars or {}).items())] + \
             [("dup", n, t) for n, t in sorted((config.max_duplicate_ngram_chars or {}).items())]
    if not config.enabled or not checks:
        return schema.empty_table()
    ords, h, lens = words if words is not None else word_hashes(con, source)
    if len(ords) == 0:
        return schema.empty_table()
    failed, shares = gopher_kernels.repetition(ords, h, lens, int(ords[-1]) + 1, checks)
    hit = np.flatnonzero(failed >= 0)  # the ords that fail
    names = [f"{kind}_{n}gram" for kind, n, _ in checks]
    return pa.table({
        "ord": hit.astype(np.int64),
        "reason": [f"repetition_{names[failed[i]]}" for i in hit],
        "detail": [f"{names[failed[i]]}_chars {shares[i]:.4f} > {checks[failed[i]][2]}"
                   for i in hit]}, schema=schema)
