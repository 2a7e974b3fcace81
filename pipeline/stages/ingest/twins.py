"""Near-twins of short texts: documents that differ by one word ("... of right eye" / "... of
left eye"), which whole-text dedup and 13-word n-gram decontamination both miss.

Two texts are **one-word-edit neighbours** when their words (lower-cased runs of word
characters, as every other ingest filter reads them) differ by one substitution, insertion or
deletion, the longer having at least ``MIN_WORDS`` words; identical word sequences are twins too.
Texts over ``MAX_WORDS`` words are not compared: a one-word edit of a long text is a near
duplicate (word 5-gram Jaccard >= 0.8), which near dedup has already removed.

Vectorised with no per-document Python loop: a text's key is a polynomial over its word hashes
(position-dependent odd coefficients); replacing word i by a wildcard (substitution keys) and
deleting word i (deletion keys, from prefix sums) give one key per word each, so neighbours are
pairs of equal keys (``np.isin``, ``np.unique``). Used by

- the grouped held-out split (``group_by``: ``auto``): near-twins form clusters (connected
  components) that land on one side of the split together (``twin_edges``);
- decontamination: training texts that are twins of an evaluation set's texts go
  (``TwinIndex.hits``);
- the twin rate of the report (``rates``, called by evaluate's ``heldout_twins``): the share of
  test documents with a twin in the training text, and the share whose word 3-grams are >= 90%
  seen in training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.stages.ingest import kernels, text_kernels
from pipeline.stages.ingest.quality import window_hashes

MIN_WORDS = 3  # a one-word change of a 2-word text changes half of it: not a template
CONTAIN_MIN_WORDS = 4  # a shorter text found inside another is a phrase, not a copy
MAX_WORDS = 256
COVERED_NGRAM = 3
COVERED_SHARE = 0.9
_SEED = 424242
_COEF = kernels.odd_coefficients(MAX_WORDS + 1, _SEED)
_WILDCARD = np.uint64(0x9E3779B97F4A7C15)
_LENGTH = np.uint64(0xC2B2AE3D27D4EB4F)  # mixes the word count into every key
_SUB_TAG = np.uint64(0x165667B19E3779F9)  # keeps substitution keys apart from the others


@dataclass(frozen=True)
class EditKeys:
    """Every key of a batch of texts: ``doc`` (row in the batch), ``key`` and ``kind`` (0: a
    substitution key, 1: a deletion key, 2: the text's own key)."""

    doc: np.ndarray
    key: np.ndarray
    kind: np.ndarray

    def of_kind(self, kind: int) -> tuple[np.ndarray, np.ndarray]:
        m = self.kind == kind
        return self.doc[m], self.key[m]


def _mix(key: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return key ^ (n.astype(np.uint64) * _LENGTH)


def edit_keys(texts: pa.Array | pa.ChunkedArray | list[str]) -> EditKeys:
    """The substitution, deletion and own keys of every text of ``MAX_WORDS`` words or fewer."""
    if isinstance(texts, list):
        texts = pa.array(texts, pa.string())
    row, h, _ = text_kernels.tokens(texts)
    n_docs = len(texts)
    counts = np.bincount(row, minlength=n_docs)
    keep = counts[row] <= MAX_WORDS
    row, h = row[keep], h[keep]
    if not len(row):
        empty = np.array([], np.int64)
        return EditKeys(empty, np.array([], np.uint64), np.array([], np.int8))
    starts = np.flatnonzero(np.diff(row, prepend=row[:1] - 1))
    n = counts[row]
    pos = np.arange(len(row)) - np.repeat(starts, np.diff(np.append(starts, len(row))))
    with np.errstate(over="ignore"):
        contrib = h * _COEF[pos]
        shifted = h * _COEF[np.maximum(pos - 1, 0)]  # word k's term once word i < k is gone
        csum, ssum = np.cumsum(contrib), np.cumsum(shifted)
        base_c = (csum - contrib)[starts]  # cumsum before each text's first word
        base_s = (ssum - shifted)[starts]
        doc_start = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(row))))
        own = csum[np.append(starts[1:], len(row)) - 1] - base_c  # per text
        s_total = ssum[np.append(starts[1:], len(row)) - 1] - base_s
        before = csum - contrib - base_c[doc_start]  # words before word i
        after = s_total[doc_start] - (ssum - base_s[doc_start])  # words after i, shifted
        sub = own[doc_start] - contrib + _WILDCARD * _COEF[pos]
        dele = before + after
    long_enough = n >= MIN_WORDS
    docs_of = row[starts]
    keys = [(row[long_enough], _mix(sub[long_enough], n[long_enough]) ^ _SUB_TAG, 0),
            (row[long_enough], _mix(dele[long_enough], n[long_enough] - 1), 1),
            (docs_of, _mix(own, counts[docs_of]), 2)]
    return EditKeys(np.concatenate([k[0] for k in keys]),
                    np.concatenate([k[1] for k in keys]),
                    np.concatenate([np.full(len(k[0]), k[2], np.int8) for k in keys]))


def _matches(a: EditKeys, b: EditKeys) -> np.ndarray:
    """The docs of ``a`` with a neighbour in ``b`` (indices into ``a``'s rows, unique)."""
    hit = []
    for ka, kb in ((0, 0), (2, 1), (1, 2), (2, 2)):  # sub~sub, shorter~longer, longer~shorter
        doc, key = a.of_kind(ka)
        hit.append(doc[np.isin(key, b.of_kind(kb)[1])])
    return np.unique(np.concatenate(hit))


class TwinIndex:
    """The keys of a set of reference texts (the held-out test part, an evaluation set), to
    find twins of them among other texts, one batch at a time."""

    def __init__(self, texts: pa.Array | pa.ChunkedArray | list[str]):
        self.keys = edit_keys(texts)
        self.size = len(texts)
        self.found = np.zeros(self.size, bool)  # reference texts with a twin seen so far

    def hits(self, texts: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
        """Rows of ``texts`` that are twins of a reference text (and marks those in ``found``)."""
        other = edit_keys(texts)
        self.found[_matches(self.keys, other)] = True
        return _matches(other, self.keys)


class Contained:
    """Short reference texts (``CONTAIN_MIN_WORDS`` words up to ``max_words``, exclusive: the
    n-gram check's length, under which a text could only match whole) found whole, as a word
    sequence, inside other texts: an ICD-10 description inside its code's text with notes."""

    def __init__(self, texts: pa.Array | pa.ChunkedArray | list[str], max_words: int):
        if isinstance(texts, list):
            texts = pa.array(texts, pa.string())
        row, h, _ = text_kernels.tokens(texts)
        counts = np.bincount(row, minlength=len(texts))
        self.by_length: dict[int, np.ndarray] = {}
        for k in range(CONTAIN_MIN_WORDS, max_words):
            m = counts[row] == k
            if m.any():
                self.by_length[k] = np.unique(window_hashes(h[m], row[m], k, _SEED)[1])

    def hits(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Rows of ``texts`` holding a reference text's whole word sequence."""
        if not self.by_length:
            return np.array([], np.int64)
        row, h, _ = text_kernels.tokens(texts)
        found = [row[start][np.isin(g, hashes)] for k, hashes in self.by_length.items()
                 for start, g in [window_hashes(h, row, k, _SEED)]]
        return np.unique(np.concatenate(found)) if found else np.array([], np.int64)


def twin_edges(texts: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
    """(pairs, 2) rows of ``texts`` that are one-word-edit neighbours (enough edges for the
    connected components: each text is linked to the first of every key bucket it shares)."""
    k = edit_keys(texts)
    # substitution buckets link every member; a deletion key links only to a text whose own
    # key it equals (two texts with one word deleted at different places are not neighbours)
    order = np.lexsort((-k.kind.astype(np.int16), k.key))
    key, doc, kind = k.key[order], k.doc[order], k.kind[order]
    first = np.flatnonzero(np.diff(key, prepend=key[:1] ^ np.uint64(1)) != 0)
    bucket = np.repeat(first, np.diff(np.append(first, len(key))))
    head_kind = kind[bucket]
    link = (bucket != np.arange(len(key))) & ((head_kind == 0) | (head_kind == 2))
    return np.stack([doc[link], doc[bucket[link]]], axis=1)


def covered(test: pa.Array | pa.ChunkedArray | list[str],
            train: Iterable[pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """Per test text, the share of its word 3-grams (a text under 3 words: the whole text)
    that occur in ``train``'s texts."""
    from pipeline.stages.ingest.dedup import shingles

    if isinstance(test, list):
        test = pa.array(test, pa.string())
    row, h, _ = text_kernels.tokens(test)
    ords, grams = shingles(row, h, COVERED_NGRAM) if len(row) else (row, h)
    seen = np.zeros(len(grams), bool)
    for texts in train:
        r, th, _ = text_kernels.tokens(texts)
        if len(r):
            seen |= np.isin(grams, shingles(r, th, COVERED_NGRAM)[1])
    total = np.bincount(ords, minlength=len(test))
    return np.bincount(ords, weights=seen, minlength=len(test)) / np.maximum(total, 1)


def rates(test_texts: pa.Array | pa.ChunkedArray, test_sources: list[str],
          train: Iterable[pa.Array | pa.ChunkedArray]) -> dict[str, dict[str, float]]:
    """{source: {docs, twin_rate, covered_rate}} of the test texts against the training text
    (one pass over ``train``, a batch of texts at a time)."""
    index = TwinIndex(test_texts)

    def each() -> Iterable[pa.Array | pa.ChunkedArray]:
        for texts in train:  # one pass: twins, then the same batch's 3-grams
            index.hits(texts)
            yield texts

    shares = covered(test_texts, each())
    src = np.array(test_sources, dtype=object)
    out = {}
    for name in sorted(set(test_sources)):
        m = src == name
        out[name] = {"docs": int(m.sum()), "twin_rate": float(index.found[m].mean()),
                     "covered_rate": float((shares[m] >= COVERED_SHARE).mean())}
    return out



def with_domain(rates_: dict[str, dict[str, float]], general: Iterable[str]
                ) -> dict[str, dict[str, float]]:
    """``rates_`` plus ``domain``: the rates over every source but the general ones, weighted
    by their test documents (the verdict's domain slice)."""
    domain = [s for s in rates_ if s not in set(general)]
    docs = sum(rates_[s]["docs"] for s in domain)
    if not docs:
        return rates_
    return {**rates_, "domain": {"docs": docs, **{
        k: sum(rates_[s][k] * rates_[s]["docs"] for s in domain) / docs
        for k in ("twin_rate", "covered_rate")}}}
