"""The compiled kernels (``ingest/kernels.py``) against plain statements of what they compute:
the DuckDB SQL that ingest ran before them (normalisation, Gopher features), Python's ``re`` for
tokens, and ``collections.Counter`` for the n-gram repetition shares. On the real sample corpora
and on literal strings that reach the corners (CRLF, Unicode space, bullets, ellipses, blank
paragraphs, non-ASCII words)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import QualityConfig, RepetitionConfig
from pipeline.stages.ingest import kernels

# ingest's normalisation as it was written in SQL
NORMALISE_SQL = r"""
trim(regexp_replace(regexp_replace(regexp_replace(regexp_replace(regexp_replace(
    nfc_normalize(text),
    '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]', '', 'g'),
    '\r\n?', chr(10), 'g'),
    '[ \t\x{00a0}\x{2000}-\x{200a}\x{3000}]+', ' ', 'g'),
    ' ?\n ?', chr(10), 'g'),
    '\n{3,}', chr(10) || chr(10), 'g'))
"""

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

CORNERS = [
    "  a \t b\u3000c \n d\r\n\r\n\r\ne\x01f\u00a0\n", "\n\n\n x", " \n\nabc", "a\r\r\nb",
    "a\r\x01\nb", "a\n \n \nb", "abc \t", "", "   ", "caf\u0065\u0301 ok", "\u2028x\x0b\x0cy\x7f",
    "a\r \nb", " x ", "\t\n", "\n",
    "- one\n  * two\n\u2022 three\nfour...\nfive\u2026\n", "Para one.\n \nPara one.\n\n\nTwo",
    "## heading #tag ... .... ..... \u2026\u2026", "THE The the, of OF and",
    "f\u00fcr die Stra\u00dfe",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u0391\u03b8\u03ae\u03bd\u03b1 123 \u00bd",
    "x\n\ny\n\nx\n\ny", "same line\nsame line\nother",
]


@pytest.fixture(scope="module")
def texts(samples_dir: Path) -> list[str]:
    """Every sample document (medical, finance, general), then the corner cases."""
    out = []
    for path in sorted(samples_dir.glob("*/*.jsonl")):
        out += [json.loads(line)["text"] for line in path.read_text().split("\n") if line]
    return out + CORNERS


def _sql(query: str, texts: list[str]) -> list[tuple]:
    con = duckdb.connect()
    con.register("source", pa.table({"ord": list(range(len(texts))), "text": texts}))
    return con.sql(query).fetchall()


def test_normalise_equals_the_sql_definition(texts: list[str]) -> None:
    expected = [r[0] for r in _sql(f"SELECT {NORMALISE_SQL} FROM source ORDER BY ord", texts)]
    got = kernels.normalise(pa.array(texts + [None])).to_pylist()
    assert got[-1] is None
    assert got[:-1] == expected
    assert got[len(texts) - len(CORNERS):][:4] == ["a b c\nd\n\nef\n", "\n\nx", "\n\nabc",
                                                     "a\n\nb"]


@pytest.mark.slow
def test_gopher_features_equal_the_sql_definition(texts: list[str]) -> None:
    texts = kernels.normalise(pa.array(texts)).to_pylist()
    texts = [t for t in texts if t]
    stop_words = QualityConfig().gopher.stop_words
    words = ", ".join(f"'{w}'" for w in stop_words)
    rows = _sql(FEATURES_SQL.format(stop_words=f"[{words}]::VARCHAR[]") + " ORDER BY ord", texts)
    got = kernels.gopher_features(pa.array(texts), stop_words)
    for k, name in enumerate(kernels.FEATURES):
        expected = np.array([np.nan if r[k + 1] is None else r[k + 1] for r in rows], float)
        assert np.allclose(got[name], expected, rtol=1e-12, equal_nan=True), name
    corner = {t: i for i, t in enumerate(texts)}
    i = corner["- one\n* two\n\u2022 three\nfour...\nfive\u2026\n"]
    assert (got["bullet_lines"][i], got["ellipsis_lines"][i]) == (3 / 5, 2 / 5)
    assert got["stop_words"][corner["THE The the, of OF and"]] == 3  # the, of, and
    assert got["duplicate_paragraphs"][corner["x\n\ny\n\nx\n\ny"]] == 0.5


def python_words(text: str) -> list[str]:
    """Lower-cased word runs, code point by code point (str.lower's final sigma aside)."""
    return re.findall(r"\w+", "".join(c.lower() if len(c.lower()) == 1 else c for c in text))


@pytest.mark.slow
def test_tokens_are_python_word_runs(texts: list[str]) -> None:
    row, h, lens = kernels.tokens(pa.array(texts))
    words = [w for t in texts for w in python_words(t)]
    assert len(words) == len(h)
    assert row.tolist() == [i for i, t in enumerate(texts) for _ in python_words(t)]
    assert lens.tolist() == [len(w) for w in words]
    by_word = dict(zip(words, h.tolist(), strict=True))  # one hash per word, none shared
    assert len(set(by_word.values())) == len(by_word)
    assert [by_word[w] for w in words] == h.tolist()
    assert by_word["f\u00fcr"] == kernels.codepoint_hash("f\u00fcr")


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
    row, h, lens = kernels.tokens(pa.array(docs))
    failed, got = kernels.repetition(row, h, lens, len(docs), checks)
    assert (failed >= 0).sum() >= 8  # the repeated and "of the" documents, at least
    for d, doc in enumerate(docs):
        words = python_words(doc)
        measured = [shares(words, n, kind) for kind, n, _ in checks]
        first = next((c for c, (_, _, t) in enumerate(checks) if measured[c] > t), -1)
        assert failed[d] == first, (d, measured)
        if first >= 0:
            assert got[d] == pytest.approx(measured[first], rel=1e-12)


def test_unicode_tables_cover_every_classified_code_point() -> None:
    flags, lower = kernels.unicode_tables()
    assert flags[ord("a")] == kernels.LETTER | kernels.WORD and flags[ord("7")] == kernels.WORD
    assert flags[ord("_")] == kernels.WORD and flags[ord(" ")] == 0
    assert lower[ord("\u00c4")] == ord("\u00e4") and lower[ord("\u03a3")] == ord("\u03c3")
    beyond = [chr(c) for c in range(kernels.LAST_CLASSIFIED + 1, 0x110000)]
    assert not any(c.isalnum() or c.lower() != c for c in beyond)


@pytest.mark.parametrize("kind", ["sequential", "random", "strided"])
def test_minhash_estimates_jaccard_without_bias(kind: str) -> None:
    """Shared shingles over all: the estimate's error is unbiased, with the binomial spread
    sqrt(J(1-J)/k), on shingle hashes with structure as well as random ones."""
    base = {"sequential": np.arange(2000, dtype=np.uint64),
            "random": np.random.default_rng(5).integers(0, 2**63, 2000, dtype=np.uint64),
            "strided": np.arange(2000, dtype=np.uint64) << np.uint64(20)}[kind]
    errors = []
    for trial in range(40):
        cut = 300 + 20 * trial  # the second set: the first but `cut` of it replaced
        other = np.concatenate([base[cut:], base[:cut] + np.uint64(1 << 40)])
        sig = kernels.minhash(np.concatenate([base, other]), np.array([0, 2000]), 256, trial)
        errors.append((sig[0] == sig[1]).mean() - (2000 - cut) / (2000 + cut))
    assert sig.dtype == np.uint32
    assert abs(np.mean(errors)) < 0.015 and np.std(errors) < 0.04  # binomial sd <= 0.031


def test_pair_jaccard_is_the_jaccard_of_the_sets() -> None:
    rng = np.random.default_rng(0)
    sets = [np.unique(rng.integers(0, 60, rng.integers(0, 40))).astype(np.uint64)
            for _ in range(30)]
    starts = np.cumsum([0] + [len(x) for x in sets])
    a, b = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    got = kernels.pair_jaccard(starts, np.concatenate(sets), a, b)
    for k in range(200):
        x, y = set(sets[a[k]].tolist()), set(sets[b[k]].tolist())
        assert got[k] == (len(x & y) / len(x | y) if x | y else 1.0)
