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

from pipeline.config import QualityConfig

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
