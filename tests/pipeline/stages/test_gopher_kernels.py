"""The Gopher kernels (``ingest/gopher_kernels.py``) against plain statements of what they
compute: the DuckDB SQL that ingest ran before them (the features) and ``collections.Counter``
(the n-gram repetition shares), on the real sample corpora and on corner strings."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import QualityConfig, RepetitionConfig
from pipeline.stages.ingest import gopher_kernels, text_kernels
from tests.pipeline.stages.kernel_texts import python_words, sample_texts, sql

# the Gopher features as they were written in SQL, over rows (ord, text) of ``source``
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
    len(list_filter(words, lambda w: regexp_matches(w, '\p{{L}}'))) / n_words AS alpha_words,
    len(list_distinct(list_filter(list_transform(words, lambda w: lower(w)),
                                  lambda w: list_contains({stop_words}, w)))) AS stop_words,
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


@pytest.fixture(scope="module")
def texts(samples_dir: Path) -> list[str]:
    return sample_texts(samples_dir)


@pytest.mark.slow
def test_gopher_features_equal_the_sql_definition(texts: list[str]) -> None:
    texts = text_kernels.normalise(pa.array(texts)).to_pylist()
    texts = [t for t in texts if t]
    stop_words = QualityConfig().gopher.stop_words
    words = ", ".join(f"'{w}'" for w in stop_words)
    rows = sql(FEATURES_SQL.format(stop_words=f"[{words}]::VARCHAR[]") + " ORDER BY ord", texts)
    got = gopher_kernels.gopher_features(pa.array(texts), stop_words)
    for k, name in enumerate(gopher_kernels.FEATURES):
        expected = np.array([np.nan if r[k + 1] is None else r[k + 1] for r in rows], float)
        assert np.allclose(got[name], expected, rtol=1e-12, equal_nan=True), name
    corner = {t: i for i, t in enumerate(texts)}
    i = corner["- one\n* two\n\u2022 three\nfour...\nfive\u2026\n"]
    assert (got["bullet_lines"][i], got["ellipsis_lines"][i]) == (3 / 5, 2 / 5)
    assert got["stop_words"][corner["THE The the, of OF and"]] == 3  # the, of, and
    assert got["duplicate_paragraphs"][corner["x\n\ny\n\nx\n\ny"]] == 0.5


def shares(words: list[str], n: int, kind: str) -> float:
    """The Gopher n-gram repetition share of ``words``, straight from its definition."""
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    total = max(sum(map(len, words)), 1)
    counts = Counter(grams)
    if kind == "top":
        repeated = [(c, sum(map(len, g))) for g, c in counts.items() if c > 1]
        if not repeated:
            return 0.0
        count, chars = max(repeated)  # the most frequent; the longest among those
        return count * chars / total
    covered = set()
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered.update(range(i, i + n))
    return sum(len(words[i]) for i in covered) / total


@pytest.mark.slow
def test_repetition_equals_its_definition(texts: list[str]) -> None:
    sentence = "the quick brown fox jumps over the lazy dog near the river bank today"
    docs = texts[:3000] + [" ".join([sentence] * k + [texts[k]]) for k in range(1, 6)] + [
        " ".join(f"word{i} of the" for i in range(m)) for m in (3, 8, 20)]
    docs = [d for d in docs if python_words(d)]
    config = RepetitionConfig()
    checks = ([("top", n, t) for n, t in sorted(config.max_top_ngram_chars.items())]
              + [("dup", n, t) for n, t in sorted(config.max_duplicate_ngram_chars.items())])
    row, h, lens = text_kernels.tokens(pa.array(docs))
    failed, got = gopher_kernels.repetition(row, h, lens, len(docs), checks)
    assert (failed >= 0).sum() >= 8  # the repeated and "of the" documents, at least
    for d, doc in enumerate(docs):
        words = python_words(doc)
        measured = [shares(words, n, kind) for kind, n, _ in checks]
        first = next((c for c, (_, _, t) in enumerate(checks) if measured[c] > t), -1)
        assert failed[d] == first, (d, measured)
        if first >= 0:
            assert got[d] == pytest.approx(measured[first], rel=1e-12)
