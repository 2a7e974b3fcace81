"""The text kernels (``ingest/text_kernels.py``) against plain statements of what they
compute: the DuckDB SQL that ingest ran before them (normalisation) and Python's ``re`` (word
tokens), on the real sample corpora and on corner strings."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.stages.ingest import text_kernels
from tests.pipeline.stages.kernel_texts import CORNERS, python_words, sample_texts, sql

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


@pytest.fixture(scope="module")
def texts(samples_dir: Path) -> list[str]:
    return sample_texts(samples_dir)


def test_normalise_equals_the_sql_definition(texts: list[str]) -> None:
    expected = [r[0] for r in sql(f"SELECT {NORMALISE_SQL} FROM source ORDER BY ord", texts)]
    got = text_kernels.normalise(pa.array(texts + [None])).to_pylist()
    assert got[-1] is None
    assert got[:-1] == expected
    assert got[len(texts) - len(CORNERS):][:4] == ["a b c\nd\n\nef\n", "\n\nx", "\n\nabc",
                                                     "a\n\nb"]


@pytest.mark.slow
def test_tokens_are_python_word_runs(texts: list[str]) -> None:
    row, h, lens = text_kernels.tokens(pa.array(texts))
    words = [w for t in texts for w in python_words(t)]
    assert len(words) == len(h)
    assert row.tolist() == [i for i, t in enumerate(texts) for _ in python_words(t)]
    assert lens.tolist() == [len(w) for w in words]
    by_word = dict(zip(words, h.tolist(), strict=True))  # one hash per word, none shared
    assert len(set(by_word.values())) == len(by_word)
    assert [by_word[w] for w in words] == h.tolist()
    assert by_word["f\u00fcr"] == text_kernels.codepoint_hash("f\u00fcr")
