"""What ingest's compiled kernels share: UTF-8 buffers of Arrow string columns, the code point
tables, UTF-8 decoding, the hash finaliser and the polynomial coefficients; and ``warm()``,
which compiles every kernel into numba's cache (``make install`` runs
``python -c "from pipeline.stages.ingest import kernels; kernels.warm()"``).

The kernels, by what uses them: ``text_kernels`` (normalisation; word tokens, for n-grams,
MinHash and decontamination), ``gopher_kernels`` (the Gopher features and n-gram repetition)
and ``minhash_kernels`` (MinHash signatures, LSH band keys, the exact Jaccard check). Each is
one pass over an Arrow string column's UTF-8 buffer or over the arrays made from it: the loops
that DuckDB's list functions and hash aggregates did before, per document and per word. numba
compiles them to machine code (``nogil``, so shard threads run them in parallel) and caches the
result beside each file (``__pycache__``), so only the first process on a machine pays the few
seconds of compilation. Nothing in them loops in Python per document.

numba keys a kernel's cache by its own file: a kernel that inlines ``decode`` or ``mix`` keeps
its cached code after they are edited here, until its own file changes. After editing them,
remove ``pipeline/stages/ingest/__pycache__/*.nbi`` (the kernels' tests fail until then).

Definitions (the tests hold each against a plain-Python or SQL statement of it):

    word        for the Gopher features: a run of bytes other than ``\\t \\n \\f \\r`` and
                space (RE2's ``\\s``), as ``regexp_split_to_array(text, '\\s+')``
    token       for n-grams and MinHash: a run of Unicode word characters (Python's ``\\w``:
                letters, digits and underscore), lower-cased code point by code point
    line        the text between newlines that holds more than spaces
    paragraph   the text between blank-line separators (RE2 ``\\n\\s*\\n``) that holds more
                than spaces
"""

from __future__ import annotations

import sys
import threading

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if sys.byteorder != "little":  # utf8_buffers and the UTF-32 table assume it
    raise ImportError("pipeline.stages.ingest.kernels needs a little-endian machine")

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
_TABLES_LOCK = threading.Lock()
_TABLES: tuple[np.ndarray, np.ndarray] | None = None

# Code point classes, one byte each (table built once per process, see ``unicode_tables``).
LETTER, WORD = np.uint8(1), np.uint8(2)


# Python 3.11's Unicode data has no letter, digit or case mapping past this (tested).
LAST_CLASSIFIED = 0x323AF


def unicode_tables() -> tuple[np.ndarray, np.ndarray]:
    """(class flags, lower-case code point) for every code point: LETTER for ``\\p{L}``
    (``str.isalpha``), WORD for Python's ``\\w``; the lower case where it is one code point."""
    global _TABLES
    with _TABLES_LOCK:  # shard threads ask at once: build it once
        if _TABLES is None:
            _TABLES = _unicode_tables()
    return _TABLES


def _unicode_tables() -> tuple[np.ndarray, np.ndarray]:
    cps = np.arange(LAST_CLASSIFIED + 1, dtype=np.int64)
    cps = cps[(cps < 0xD800) | (cps > 0xDFFF)]
    text = "".join(map(chr, cps.tolist()))
    flags = np.zeros(0x110000, np.uint8)
    flags[cps] = (np.fromiter(map(str.isalpha, text), bool, len(text)) * LETTER
                  | np.fromiter(map(str.isalnum, text), bool, len(text)) * WORD)
    flags[ord("_")] |= WORD
    lower = np.arange(0x110000, dtype=np.int32)
    # str.lower maps one code point to one, except U+0130 (to "i" + a combining dot)
    single = cps[cps != 0x130]
    lowered = "".join(map(chr, single.tolist())).lower()
    if len(lowered) != len(single):
        raise RuntimeError("a lower-case mapping changed length: the Unicode tables are wrong")
    lower[single] = np.frombuffer(lowered.encode("utf-32-le"), np.uint32).astype(np.int32)
    lower[0x130] = ord("i")
    return flags, lower


def odd_coefficients(n: int, seed: int) -> np.ndarray:
    """``n`` random odd uint64 multipliers drawn from ``seed``: the coefficients of the
    polynomial hashes over windows of word hashes (n-grams, shingles, LSH bands)."""
    return np.random.default_rng(seed).integers(1, 2**63, size=n, dtype=np.uint64) | 1


def utf8_buffers(array: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets, uint8 data) of a string column, without copying the text when it is
    one chunk of large strings; nulls read as empty strings."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], pa.large_string())
    if array.null_count:
        array = pc.fill_null(array, "")
    if array.type != pa.large_string():
        array = array.cast(pa.large_string())
    _, offsets_buf, data_buf = array.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[array.offset:array.offset + len(array) + 1]
    data = (np.frombuffer(data_buf, np.uint8) if data_buf is not None and data_buf.size
            else np.zeros(1, np.uint8))
    return offsets, data


@numba.njit(inline="always")
def decode(data: np.ndarray, i: int) -> tuple[int, int]:
    """The code point at byte ``i`` of valid UTF-8 and its length in bytes."""
    b = np.int64(data[i])
    if b < 0x80:
        return b, 1
    if b < 0xE0:
        return ((b & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F), 2
    if b < 0xF0:
        return (((b & 0x0F) << 12) | ((np.int64(data[i + 1]) & 0x3F) << 6)
                | (np.int64(data[i + 2]) & 0x3F)), 3
    return (((b & 0x07) << 18) | ((np.int64(data[i + 1]) & 0x3F) << 12)
            | ((np.int64(data[i + 2]) & 0x3F) << 6) | (np.int64(data[i + 3]) & 0x3F)), 4


@numba.njit(inline="always")
def mix(h: np.uint64) -> np.uint64:
    """splitmix64's finaliser: FNV-1a alone leaves the low bits (the hash-table slot) weak."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h



def warm() -> None:
    """Compile (or load from the cache) every kernel on a few strings."""
    from pipeline.stages.ingest import gopher_kernels, minhash_kernels, text_kernels

    texts = pa.array(["Warm the kernels:  a\r\n\n\nb caf\u00e9 ...", None, ""])
    normalised = text_kernels.normalise(texts)
    row, h, lens = text_kernels.tokens(normalised)
    gopher_kernels.gopher_features(normalised, ["the"])
    gopher_kernels.repetition(row, h, lens, len(texts), [("top", 2, 0.2), ("dup", 5, 0.15)])
    minhash_kernels.band_keys(minhash_kernels.minhash(h, np.array([0], np.int64), 8, 0), 4, 0)
    minhash_kernels.pair_jaccard(
        *minhash_kernels.distinct_sorted(np.array([0, 1], np.int64), h[:1].astype(np.uint32)),
        np.array([0]), np.array([0]))


if __name__ == "__main__":  # python -m pipeline.stages.ingest.kernels: fill the compile cache too
    warm()
