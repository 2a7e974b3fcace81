"""Compiled text kernels (``kernels.py`` says what they share and how they are cached):
normalisation (the shard step's, before anything else reads the text) and word tokens, which
the n-gram repetition filter, MinHash and decontamination hash (``quality.word_hashes``)."""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.stages.ingest.kernels import (
    FNV_OFFSET,
    FNV_PRIME,
    WORD,
    decode,
    mix,
    unicode_tables,
    utf8_buffers,
)

# --- tokens for n-grams and MinHash ------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def _token_count(offsets: np.ndarray, data: np.ndarray, flags: np.ndarray) -> int:
    n = 0
    for d in range(len(offsets) - 1):
        inside = False  # a token never runs from one document into the next
        for i in range(offsets[d], offsets[d + 1]):
            b = data[i]
            if b < 0x80:
                word = (flags[b] & WORD) != 0
            elif b >= 0xC0:
                cp, _ = decode(data, i)
                word = (flags[cp] & WORD) != 0
            else:
                continue  # a continuation byte: part of the code point before it
            if word and not inside:
                n += 1
            inside = word
    return n


@numba.njit(nogil=True, cache=True)
def _tokens(offsets: np.ndarray, data: np.ndarray, flags: np.ndarray, lower: np.ndarray,
            doc: np.ndarray, h: np.ndarray, lens: np.ndarray) -> int:
    k = -1
    for d in range(len(offsets) - 1):
        inside = False
        acc = FNV_OFFSET
        i = offsets[d]
        end = offsets[d + 1]
        while i < end:
            cp, step = decode(data, i)
            if (flags[cp] & WORD) != 0:
                if not inside:
                    k += 1
                    doc[k] = d
                    lens[k] = 0
                    acc = FNV_OFFSET
                    inside = True
                acc = (acc ^ np.uint64(lower[cp])) * FNV_PRIME
                lens[k] += 1
            elif inside:
                h[k] = mix(acc)
                inside = False
            i += step
        if inside:
            h[k] = mix(acc)
    return k + 1


def tokens(array: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index, uint64 hash, characters) of every token of every row, in row and text
    order: lower-cased runs of word characters."""
    flags, lower = unicode_tables()
    offsets, data = utf8_buffers(array)
    n = _token_count(offsets, data, flags)
    doc, h, lens = np.empty(n, np.int64), np.empty(n, np.uint64), np.empty(n, np.int64)
    written = _tokens(offsets, data, flags, lower, doc, h, lens)  # not in an assert: -O skips it
    if written != n:
        raise RuntimeError(f"tokens: counted {n} tokens but wrote {written}")
    return doc, h, lens


def codepoint_hash(word: str) -> int:
    """The hash ``tokens`` gives a token (already lower-cased): for stop words."""
    return int(_codepoint_hash(np.array([ord(c) for c in word], np.int64)))


@numba.njit(cache=True)
def _codepoint_hash(cps: np.ndarray) -> np.uint64:
    acc = FNV_OFFSET
    for c in cps:
        acc = (acc ^ np.uint64(c)) * FNV_PRIME
    return mix(acc)


# --- normalisation -----------------------------------------------------------------------------


@numba.njit(inline="always")
def _is_control(cp: int) -> bool:  # [\x00-\x08\x0b\x0c\x0e-\x1f\x7f]
    return cp <= 8 or cp == 11 or cp == 12 or 14 <= cp <= 31 or cp == 127


@numba.njit(inline="always")
def _is_blank(cp: int) -> bool:  # horizontal space: [ \t\u00a0\u2000-\u200a\u3000]
    return cp == 32 or cp == 9 or cp == 0xA0 or 0x2000 <= cp <= 0x200A or cp == 0x3000


@numba.njit(nogil=True, cache=True)
def _normalise(offsets: np.ndarray, data: np.ndarray, out_offsets: np.ndarray,
               out: np.ndarray) -> None:
    o = 0
    for d in range(len(offsets) - 1):
        i, hi = offsets[d], offsets[d + 1]
        newlines = 0  # newlines waiting to be written: a run of 3+ is written as 2
        space = False  # a run of horizontal space waiting to be written as one space
        after_cr = False
        started = False
        while i < hi:
            cp, step = decode(data, i)
            i += step
            if _is_control(cp):
                continue
            if cp == 10 and after_cr:  # CRLF is one newline
                after_cr = False
                continue
            after_cr = cp == 13
            if cp == 10 or cp == 13:
                newlines += 1
                space = False  # spaces before a newline go
                continue
            if _is_blank(cp):
                space = newlines == 0  # and so do spaces after one
                continue
            if newlines:
                for _ in range(min(newlines, 2)):
                    out[o] = 10
                    o += 1
                newlines = 0
            elif space and started:  # leading spaces are trimmed
                out[o] = 32
                o += 1
            space = False
            started = True
            for k in range(i - step, i):
                out[o] = data[k]
                o += 1
        for _ in range(min(newlines, 2)):  # trailing spaces are trimmed, newlines are not
            out[o] = 10
            o += 1
        out_offsets[d + 1] = o


def normalise(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Unicode NFC, control characters removed, CR and CRLF as LF, each run of horizontal space
    as one space, none next to a newline, 3+ newlines as a paragraph break (2), spaces trimmed
    from both ends. Nulls stay null."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], pa.large_string())
    nfc = pc.utf8_normalize(array, "NFC")
    offsets, data = utf8_buffers(nfc)
    out_offsets = np.zeros(len(offsets), np.int64)
    out = np.empty(max(len(data), 1), np.uint8)
    _normalise(offsets, data, out_offsets, out)
    result = pa.LargeStringArray.from_buffers(
        len(array), pa.py_buffer(out_offsets), pa.py_buffer(out[:max(out_offsets[-1], 1)]))
    return pc.if_else(pc.is_null(array), pa.scalar(None, pa.large_string()), result) \
        if array.null_count else result

