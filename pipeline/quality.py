"""Document quality filters as DuckDB SQL: Gopher's quality heuristics and repetition filters
(Rae et al. 2021, "Scaling Language Models", appendix A), as datatrove implements them.

Each filter is a threshold in ``QualityConfig`` (``null`` turns one off) and one branch of a SQL
``CASE``: the first filter a document fails is its exclusion reason (``gopher_<field>`` or
``repetition_<field>``, e.g. ``gopher_min_words``), with the measured value and the threshold
in ``detail``. The features are computed once per document with DuckDB list functions,
vectorised over the whole table: no per-document Python.

    words       whitespace-separated tokens
    lines       non-empty lines
    paragraphs  blocks separated by blank lines
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from pipeline.config import C4Config, QualityConfig, RepetitionConfig

# The features, one row per document of ``source`` (columns ord, text).
FEATURES_SQL = r"""
SELECT ord, n_words, n_lines, n_chars,
    list_avg(list_transform(words, lambda w: length(w))) AS mean_word_length,
    (n_chars - length(replace(text, '#', ''))) / n_words AS hash_ratio,
    ((n_chars - length(replace(text, '...', ''))) / 3
     + n_chars - length(replace(text, '…', ''))) / n_words AS ellipsis_ratio,
    len(list_filter(lines, lambda l: suffix(l, '...') OR suffix(l, '…'))) / n_lines
        AS ellipsis_lines,
    len(list_filter(lines, lambda l: regexp_matches(l, '^\s*[•●‣◦⁃▪\-\*]'))) / n_lines
        AS bullet_lines,
    len(list_filter(words, lambda w: regexp_matches(w, '\p{L}'))) / n_words AS alpha_words,
    len(list_distinct(list_filter(list_transform(words, lambda w: lower(w)),
                                  lambda w: list_contains($stop_words, w)))) AS stop_words,
    (n_lines - len(list_distinct(lines))) / n_lines AS duplicate_lines,
    (n_paragraphs - len(list_distinct(paragraphs))) / n_paragraphs AS duplicate_paragraphs,
    (list_sum(list_transform(lines, lambda l: length(l)))
     - coalesce(list_sum(list_transform(list_distinct(lines), lambda l: length(l))), 0))
        / n_chars AS duplicate_line_chars,
    (list_sum(list_transform(paragraphs, lambda p: length(p)))
     - coalesce(list_sum(list_transform(list_distinct(paragraphs), lambda p: length(p))), 0))
        / n_chars AS duplicate_paragraph_chars
FROM (
    SELECT ord, text, words, lines, paragraphs, length(text) AS n_chars,
           greatest(len(words), 1) AS n_words, greatest(len(lines), 1) AS n_lines,
           greatest(len(paragraphs), 1) AS n_paragraphs
    FROM (
        SELECT ord, text,
               list_filter(regexp_split_to_array(text, '\s+'), lambda w: w <> '') AS words,
               list_filter(string_split(text, chr(10)), lambda l: trim(l) <> '') AS lines,
               list_filter(regexp_split_to_array(text, '\n\s*\n'), lambda p: trim(p) <> '')
                   AS paragraphs
        FROM source))
"""

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


def features_sql(config: QualityConfig) -> str:
    words = ", ".join("'" + w.lower().replace("'", "''") + "'" for w in config.gopher.stop_words)
    return FEATURES_SQL.replace("$stop_words", f"[{words}]::VARCHAR[]")


# --- C4 line filters ---------------------------------------------------------------------------

POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
          "use cookies")
CITATION_RE = r"\[\d+\]|\[edit\]|\[citation needed\]"
SENTENCE_END = r"[.!?]+[\"'']?(\s|$)"  # in SQL: '' is a quote


def c4_sql(config: C4Config) -> str:
    """Per document of ``source`` (ord, text): the text with failing lines removed (``c4_text``),
    lines before and after, and the exclusion reason (NULL: it stays). Blank lines (paragraph
    breaks) are kept; runs of them collapse to one."""
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
                FROM (SELECT ord, text, string_split(text, chr(10)) AS lines FROM source)))
    """


# --- Gopher n-gram repetition ------------------------------------------------------------------

# No ORDER BY: DuckDB keeps a scan's order (preserve_insertion_order), and word_hashes checks
# it, sorting only if it ever does not hold; the sort cost a third of the query.
NGRAM_WORDS_SQL = r"""
SELECT ord, hash(w) AS h, length(w) AS len FROM (
    SELECT ord, unnest(regexp_extract_all(lower(text), '\w+')) AS w FROM $source)
"""


def window_hashes(h: np.ndarray, doc: np.ndarray, n: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Start positions of the word n-grams that lie inside one document, and their hashes: a
    polynomial over each window of word hashes ``h`` (``doc``: each word's document), with
    odd coefficients drawn from ``seed``."""
    m = len(h) - n + 1
    if m <= 0:
        return np.array([], np.int64), np.array([], np.uint64)
    coef = np.random.default_rng(seed).integers(1, 2**63, size=n, dtype=np.uint64) | 1
    g = np.zeros(m, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            g += h[k:k + m] * coef[k]
    start = np.flatnonzero(doc[:m] == doc[n - 1:])
    return start, g[start]


# Every n-gram of a document is keyed by its hash plus the document's index times an odd
# constant, so equal keys are equal n-grams of one document; DuckDB's hash aggregate groups
# them (a sort of the keys in numpy was 10x slower).
DOC_MIX = np.uint64(0x9E3779B97F4A7C15)


def _keys(con: duckdb.DuckDBPyConnection, start: np.ndarray, g: np.ndarray, doc: np.ndarray,
          chars: np.ndarray) -> None:
    with np.errstate(over="ignore"):
        key = g + doc[start].astype(np.uint64) * DOC_MIX
    con.register("grams", pa.table({"key": key, "doc": doc[start], "pos": start,
                                    "chars": chars}))


def _top(con: duckdb.DuckDBPyConnection, n_docs: int) -> np.ndarray:
    """Per document: the count of its most frequent n-gram times the n-gram's characters (the
    longest, among equally frequent ones); 0 if no n-gram repeats."""
    rows = con.sql("""
        SELECT doc, arg_max(cnt * chars, cnt * 1000000000 + chars)
        FROM (SELECT any_value(doc) AS doc, count(*) AS cnt, any_value(chars) AS chars
              FROM grams GROUP BY key HAVING count(*) > 1)
        GROUP BY doc""").arrow()
    if hasattr(rows, "read_all"):
        rows = rows.read_all()
    top = np.zeros(n_docs, np.int64)
    top[rows.column(0).to_numpy()] = rows.column(1).to_numpy()
    return top


def _repeated_positions(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    rows = con.sql("""
        SELECT pos FROM grams WHERE key IN (SELECT key FROM grams GROUP BY key
                                            HAVING count(*) > 1)""").arrow()
    if hasattr(rows, "read_all"):
        rows = rows.read_all()
    return rows.column(0).to_numpy() if rows.num_rows else np.array([], np.int64)


def word_hashes(con: duckdb.DuckDBPyConnection, source: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(document ord, uint64 hash, characters) of every word of the rows (ord, text) of
    ``source``, in document and word order: lower-cased ``\\w+`` words, as near-dedup uses."""
    table = con.sql(NGRAM_WORDS_SQL.replace("$source", source)).arrow()
    if hasattr(table, "read_all"):
        table = table.read_all()
    ords = table.column("ord").to_numpy()
    h = table.column("h").to_numpy().astype(np.uint64)
    lens = table.column("len").to_numpy().astype(np.int64)
    if len(ords) and (np.diff(ords) < 0).any():  # ord order, words in order within each
        order = np.argsort(ords, kind="stable")
        ords, h, lens = ords[order], h[order], lens[order]
    return ords, h, lens


def ngram_repetition(con: duckdb.DuckDBPyConnection, source: str, config: RepetitionConfig,
                     words: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                     ) -> pa.Table:
    """Gopher's n-gram repetition filters over the rows (ord, text) of ``source``, with numpy:

    - top n-gram (n = 2, 3, 4): the characters of the most frequent word n-gram (its count times
      its length), as a share of all word characters;
    - duplicate n-grams (n = 5..10): the share of word characters inside any n-gram that occurs
      more than once. It can only fall as n grows, so each n is computed only for the
      documents that passed the checks so far and were over this n's threshold at n - 1.

    Returns (ord, reason, detail) for the documents that fail, the first check in that order.
    ``words``: ``word_hashes(con, source)``, when the caller already has them."""
    schema = pa.schema([("ord", pa.int64()), ("reason", pa.string()), ("detail", pa.string())])
    checks = [("top", n, t) for n, t in sorted((config.max_top_ngram_chars or {}).items())] + \
             [("dup", n, t) for n, t in sorted((config.max_duplicate_ngram_chars or {}).items())]
    if not config.enabled or not checks:
        return schema.empty_table()
    ords, h, lens = words if words is not None else word_hashes(con, source)
    if len(ords) == 0:
        return schema.empty_table()
    doc_ords, doc = np.unique(ords, return_inverse=True)
    total = np.bincount(doc, weights=lens, minlength=len(doc_ords))
    csum = np.concatenate([[0], np.cumsum(lens)])
    failed: dict[int, tuple[str, str]] = {}
    live = np.ones(len(doc_ords), bool)  # documents that can still fail a duplicate n-gram check
    for kind, n, threshold in checks:
        mask = live[doc]
        start, g = window_hashes(h[mask], doc[mask], n, seed=n)
        start = np.flatnonzero(mask)[start] if len(start) else start
        if not len(start):
            continue
        chars = csum[start + n] - csum[start]
        _keys(con, start, g, doc, chars)
        if kind == "top":
            share = _top(con, len(doc_ords)) / np.maximum(total, 1)
        else:
            dup_pos = _repeated_positions(con)
            cover = np.bincount(dup_pos, minlength=len(h) + n + 1)[:len(h) + 1] - \
                np.bincount(dup_pos + n, minlength=len(h) + n + 1)[:len(h) + 1]
            covered = np.cumsum(cover[:-1]) > 0
            share = np.bincount(doc, weights=lens * covered, minlength=len(doc_ords)) / \
                np.maximum(total, 1)
        con.unregister("grams")
        name = f"{kind}_{n}gram"
        if kind == "dup":
            # The share only falls as n grows: only documents still under this threshold and
            # over the next one can fail later.
            later = [t for k, m, t in checks if k == "dup" and m > n]
            live &= (share <= threshold) & (share > (later[0] if later else np.inf))
        else:
            live &= share <= threshold  # the first failing check is the reason
        for i in np.flatnonzero(share > threshold):
            failed.setdefault(int(doc_ords[i]),
                              (f"repetition_{name}",
                               f"{name}_chars {share[i]:.4f} > {threshold}"))
    return pa.table({"ord": list(failed), "reason": [r for r, _ in failed.values()],
                     "detail": [d for _, d in failed.values()]}, schema=schema)
