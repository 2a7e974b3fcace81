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

NGRAM_WORDS_SQL = r"""
SELECT ord, hash(w) AS h, length(w) AS len FROM (
    SELECT ord, unnest(words) AS w, generate_subscripts(words, 1) AS pos
    FROM (SELECT ord, regexp_extract_all(lower(text), '\w+') AS words FROM $source))
ORDER BY ord, pos
"""


def _windows(h: np.ndarray, doc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Start positions of the word n-grams that lie inside one document, and their hashes."""
    m = len(h) - n + 1
    if m <= 0:
        return np.array([], np.int64), np.array([], np.uint64)
    coef = np.random.default_rng(n).integers(1, 2**63, size=n, dtype=np.uint64) | 1
    g = np.zeros(m, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            g += h[k:k + m] * coef[k]
    start = np.flatnonzero(doc[:m] == doc[n - 1:])
    return start, g[start]


def _runs(start: np.ndarray, g: np.ndarray, doc: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group equal n-grams of a document: (positions sorted by (doc, hash), run id of each,
    run lengths)."""
    order = np.lexsort((g, doc[start]))
    pos, key, d = start[order], g[order], doc[start][order]
    new = np.ones(len(pos), bool)
    new[1:] = (key[1:] != key[:-1]) | (d[1:] != d[:-1])
    run = np.cumsum(new) - 1
    return pos, run, np.bincount(run)


def ngram_repetition(con: duckdb.DuckDBPyConnection, source: str, config: RepetitionConfig
                     ) -> pa.Table:
    """Gopher's n-gram repetition filters over the rows (ord, text) of ``source``, with numpy:

    - top n-gram (n = 2, 3, 4): the characters of the most frequent word n-gram (its count times
      its length), as a share of all word characters;
    - duplicate n-grams (n = 5..10): the share of word characters inside any n-gram that occurs
      more than once. It can only fall as n grows, so n > 5 is computed only for the documents
      over the smallest threshold at n = 5.

    Returns (ord, reason, detail) for the documents that fail, the first check in that order."""
    schema = pa.schema([("ord", pa.int64()), ("reason", pa.string()), ("detail", pa.string())])
    checks = [("top", n, t) for n, t in sorted((config.max_top_ngram_chars or {}).items())] + \
             [("dup", n, t) for n, t in sorted((config.max_duplicate_ngram_chars or {}).items())]
    if not config.enabled or not checks:
        return schema.empty_table()
    table = con.sql(NGRAM_WORDS_SQL.replace("$source", source)).arrow()
    if hasattr(table, "read_all"):
        table = table.read_all()
    if table.num_rows == 0:
        return schema.empty_table()
    ords = table.column("ord").to_numpy()
    h = table.column("h").to_numpy().astype(np.uint64)
    lens = table.column("len").to_numpy().astype(np.int64)
    doc_ords, doc = np.unique(ords, return_inverse=True)
    total = np.bincount(doc, weights=lens, minlength=len(doc_ords))
    csum = np.concatenate([[0], np.cumsum(lens)])
    failed: dict[int, tuple[str, str]] = {}
    live = np.ones(len(doc_ords), bool)  # documents still to check for duplicate n-grams
    dup_floor = min([t for kind, _, t in checks if kind == "dup"], default=1.0)
    for kind, n, threshold in checks:
        if kind == "dup":
            mask = live[doc]
            start, g = _windows(h[mask], doc[mask], n)
            start = np.flatnonzero(mask)[start] if len(start) else start
        else:
            start, g = _windows(h, doc, n)
        if not len(start):
            continue
        pos, run, size = _runs(start, g, doc)
        if kind == "top":
            first = np.r_[0, np.flatnonzero(np.diff(run)) + 1]  # one position per run
            run_doc, chars = doc[pos[first]], csum[pos[first] + n] - csum[pos[first]]
            count = np.zeros(len(doc_ords), np.int64)
            np.maximum.at(count, run_doc, size)
            top = size == count[run_doc]  # the most frequent n-grams; then the longest
            top_chars = np.zeros(len(doc_ords), np.int64)
            np.maximum.at(top_chars, run_doc[top], chars[top])
            share = np.where(count >= 2, count * top_chars / np.maximum(total, 1), 0.0)
        else:
            cover = np.zeros(len(h) + 1, np.int64)
            dup_pos = pos[size[run] >= 2]
            np.add.at(cover, dup_pos, 1)
            np.add.at(cover, dup_pos + n, -1)
            covered = np.cumsum(cover[:-1]) > 0
            share = np.bincount(doc, weights=lens * covered, minlength=len(doc_ords)) / \
                np.maximum(total, 1)
            if n == min(m for k, m, _ in checks if k == "dup"):
                live &= share > dup_floor
        name = f"{kind}_{n}gram"
        for i in np.flatnonzero(share > threshold):
            failed.setdefault(int(doc_ords[i]),
                              (f"repetition_{name}",
                               f"{name}_chars {share[i]:.4f} > {threshold}"))
    return pa.table({"ord": list(failed), "reason": [r for r, _ in failed.values()],
                     "detail": [d for _, d in failed.values()]}, schema=schema)
