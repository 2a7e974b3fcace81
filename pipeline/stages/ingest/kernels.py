"""Compiled per-document kernels for ingest, each one pass over an Arrow string column's UTF-8
buffer or over the arrays made from it: normalisation, word tokens, the Gopher features, the
n-gram repetition counts, MinHash signatures and LSH band keys, and the exact Jaccard check of
near-duplicate candidates.

These are the loops that DuckDB's list functions and hash aggregates did before, per document
and per word; numba compiles them to machine code (``nogil``, so shard threads run them in
parallel) and caches the result beside this file (``__pycache__``), so only the first process on
a machine pays the few seconds of compilation (``warm()`` fills the cache: ``make install``
runs ``python -c "from pipeline.stages.ingest import kernels; kernels.warm()"``). Nothing here loops
in Python per document.

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
def _decode(data: np.ndarray, i: int) -> tuple[int, int]:
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
def _mix(h: np.uint64) -> np.uint64:
    """splitmix64's finaliser: FNV-1a alone leaves the low bits (the hash-table slot) weak."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


@numba.njit(inline="always")
def _bytes_hash(data: np.ndarray, lo: int, hi: int) -> np.uint64:
    h = FNV_OFFSET
    for i in range(lo, hi):
        h = (h ^ np.uint64(data[i])) * FNV_PRIME
    return _mix(h)


@numba.njit(inline="always")
def _is_space(b: int) -> bool:  # RE2's \s
    return b == 32 or b == 9 or b == 10 or b == 12 or b == 13


@numba.njit(inline="always")
def _insert(keys: np.ndarray, stamps: np.ndarray, counts: np.ndarray, mask: np.uint64,
            stamp: int, key: np.uint64) -> tuple[int, bool]:
    """Count ``key`` in an open-addressing table whose live slots carry ``stamp`` (so a new
    document's table needs no clearing); returns its slot and whether it is new."""
    slot = np.int64(key & mask)
    while True:
        if stamps[slot] != stamp:
            stamps[slot] = stamp
            keys[slot] = key
            counts[slot] = 1
            return slot, True
        if keys[slot] == key:
            counts[slot] += 1
            return slot, False
        slot = np.int64((np.uint64(slot) + np.uint64(1)) & mask)


@numba.njit(inline="always")
def _mask_for(n: int) -> np.uint64:
    size = 16
    while size < 2 * n:
        size *= 2
    return np.uint64(size - 1)


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
                cp, _ = _decode(data, i)
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
            cp, step = _decode(data, i)
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
                h[k] = _mix(acc)
                inside = False
            i += step
        if inside:
            h[k] = _mix(acc)
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
    return _mix(acc)


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
            cp, step = _decode(data, i)
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


# --- Gopher features ---------------------------------------------------------------------------

# Bullet marks at a line's start: - * and these (UTF-8 lead code points).
BULLETS = np.array([ord(c) for c in "-*\u2022\u25cf\u2023\u25e6\u2043\u25aa"], np.int64)

FEATURES = ("n_words", "n_lines", "n_chars", "mean_word_length", "hash_ratio", "ellipsis_ratio",
            "ellipsis_lines", "bullet_lines", "alpha_words", "stop_words", "duplicate_lines",
            "duplicate_paragraphs", "duplicate_line_chars", "duplicate_paragraph_chars")


@numba.njit(inline="always")
def _chars(data: np.ndarray, lo: int, hi: int) -> int:
    n = 0
    for i in range(lo, hi):
        if (data[i] & 0xC0) != 0x80:
            n += 1
    return n


@numba.njit(inline="always")
def _blank(data: np.ndarray, lo: int, hi: int) -> bool:  # DuckDB's trim(x) = '' (spaces)
    for i in range(lo, hi):  # noqa: SIM110 (numba compiles no generator in all())
        if data[i] != 32:
            return False
    return True


@numba.njit(inline="always")
def _ends_with_ellipsis(data: np.ndarray, lo: int, hi: int) -> bool:
    if hi - lo >= 3 and data[hi - 1] == 46 and data[hi - 2] == 46 and data[hi - 3] == 46:
        return True
    return hi - lo >= 3 and data[hi - 3] == 0xE2 and data[hi - 2] == 0x80 and data[hi - 1] == 0xA6


@numba.njit(nogil=True, cache=True)
def _features(offsets: np.ndarray, data: np.ndarray, flags: np.ndarray, lower: np.ndarray,
              stop: np.ndarray, stop_min: int, stop_max: int, bullets: np.ndarray,
              out: np.ndarray) -> None:
    """One row of ``out`` (documents x FEATURES, float64; NaN for SQL's NULL) per document."""
    # lines and paragraphs of a document: at most one more than its newlines
    pieces = np.ones(len(offsets) - 1, np.int64)
    for d in range(len(offsets) - 1):
        for i in range(offsets[d], offsets[d + 1]):
            if data[i] == 10:
                pieces[d] += 1
    capacity = np.int64(_mask_for(pieces.max() if len(pieces) else 1)) + 1
    keys = np.empty(capacity, np.uint64)
    stamps = np.full(capacity, -1, np.int64)
    counts = np.empty(capacity, np.int64)
    seen_stop = np.zeros(max(len(stop), 1), np.bool_)
    stamp = 0
    for d in range(len(offsets) - 1):
        lo, hi = offsets[d], offsets[d + 1]
        n_chars = _chars(data, lo, hi)
        # words: runs of non-space bytes
        n_words = 0
        word_chars = 0
        alpha = 0
        n_stop = 0
        seen_stop[:] = False
        i = lo
        while i < hi:
            while i < hi and _is_space(data[i]):
                i += 1
            if i >= hi:
                break
            has_letter = False
            cps = 0
            acc = FNV_OFFSET
            while i < hi and not _is_space(data[i]):
                cp, step = _decode(data, i)
                if (flags[cp] & LETTER) != 0:
                    has_letter = True
                acc = (acc ^ np.uint64(lower[cp])) * FNV_PRIME
                cps += 1
                i += step
            n_words += 1
            word_chars += cps
            if has_letter:
                alpha += 1
            if stop_min <= cps <= stop_max:
                h = _mix(acc)
                for s in range(len(stop)):
                    if stop[s] == h and not seen_stop[s]:
                        seen_stop[s] = True
                        n_stop += 1
        # '#' characters, and ellipses ("..." counted without overlap, and U+2026)
        hashes = 0
        ellipses = 0
        i = lo
        while i < hi:
            b = data[i]
            if b == 35:
                hashes += 1
            elif b == 46 and i + 2 < hi and data[i + 1] == 46 and data[i + 2] == 46:
                ellipses += 1
                i += 3
                continue
            elif b == 0xE2 and i + 2 < hi and data[i + 1] == 0x80 and data[i + 2] == 0xA6:
                ellipses += 1
            i += 1
        # lines: between newlines, holding more than spaces
        stamp += 1
        mask = _mask_for(pieces[d])
        n_lines = 0
        line_chars = 0
        distinct = 0
        distinct_chars = 0
        ellipsis_lines = 0
        bullet_lines = 0
        start = lo
        for i in range(lo, hi + 1):
            if i < hi and data[i] != 10:
                continue
            if not _blank(data, start, i):
                n_lines += 1
                c = _chars(data, start, i)
                line_chars += c
                if _ends_with_ellipsis(data, start, i):
                    ellipsis_lines += 1
                j = start
                while j < i and _is_space(data[j]):
                    j += 1
                if j < i:
                    cp, _ = _decode(data, j)
                    for bullet in bullets:
                        if cp == bullet:
                            bullet_lines += 1
                            break
                _, new = _insert(keys, stamps, counts, mask, stamp,
                                 _bytes_hash(data, start, i))
                if new:
                    distinct += 1
                    distinct_chars += c
            start = i + 1
        # paragraphs: split at a newline, any whitespace, and the last newline of that run
        stamp += 1
        n_par = 0
        par_chars = 0
        par_distinct = 0
        par_distinct_chars = 0
        start = lo
        i = lo
        while i <= hi:
            end = -1
            nxt = hi + 1
            if i == hi:
                end = hi
            elif data[i] == 10:
                last = -1
                j = i + 1
                while j < hi and _is_space(data[j]):
                    if data[j] == 10:
                        last = j
                    j += 1
                if last >= 0:
                    end = i
                    nxt = last + 1
            if end < 0:
                i += 1
                continue
            if not _blank(data, start, end):
                n_par += 1
                c = _chars(data, start, end)
                par_chars += c
                _, new = _insert(keys, stamps, counts, mask, stamp,
                                 _bytes_hash(data, start, end))
                if new:
                    par_distinct += 1
                    par_distinct_chars += c
            start = nxt
            i = nxt
        words = max(n_words, 1)
        lines = max(n_lines, 1)
        pars = max(n_par, 1)
        row = out[d]
        row[0] = words
        row[1] = lines
        row[2] = n_chars
        row[3] = word_chars / n_words if n_words else np.nan
        row[4] = hashes / words
        row[5] = ellipses / words
        row[6] = ellipsis_lines / lines
        row[7] = bullet_lines / lines
        row[8] = alpha / words
        row[9] = n_stop
        row[10] = (lines - distinct) / lines
        row[11] = (pars - par_distinct) / pars
        # SQL's list_sum of no lines is NULL
        row[12] = (line_chars - distinct_chars) / n_chars if n_lines and n_chars else np.nan
        row[13] = ((par_chars - par_distinct_chars) / n_chars if n_par and n_chars
                   else np.nan)


def gopher_features(array: pa.Array | pa.ChunkedArray, stop_words: list[str]
                    ) -> dict[str, np.ndarray]:
    """FEATURES of every row of a string column (float64; NaN where SQL would give NULL)."""
    flags, lower = unicode_tables()
    offsets, data = utf8_buffers(array)
    lowered = sorted({w.lower() for w in stop_words})
    stop = np.array([codepoint_hash(w) for w in lowered], np.uint64)
    sizes = [len(w) for w in lowered] or [1]
    out = np.zeros((len(offsets) - 1, len(FEATURES)), np.float64)
    _features(offsets, data, flags, lower, stop, min(sizes), max(sizes) if lowered else 0,
              BULLETS, out)
    return {name: out[:, k] for k, name in enumerate(FEATURES)}


# --- n-gram repetition -------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def _repetition(starts: np.ndarray, h: np.ndarray, lens: np.ndarray, kinds: np.ndarray,
                ns: np.ndarray, thresholds: np.ndarray, later_min: np.ndarray,
                coefs: np.ndarray, failed: np.ndarray, shares: np.ndarray) -> None:
    """Per document (tokens ``starts[d]:starts[d + 1]``), the first check it fails (-1: none)
    and the share measured; ``kinds`` 0 = top n-gram, 1 = duplicated n-grams; ``later_min``:
    the lowest threshold of the checks after each one."""
    most = 1  # the most tokens in a document: its windows are fewer
    for d in range(len(starts) - 1):
        most = max(most, starts[d + 1] - starts[d])
    capacity = np.int64(_mask_for(most)) + 1
    keys = np.empty(capacity, np.uint64)
    stamps = np.full(capacity, -1, np.int64)
    counts = np.empty(capacity, np.int64)
    slots = np.empty(capacity, np.int64)
    stamp = 0
    for d in range(len(starts) - 1):
        lo, hi = starts[d], starts[d + 1]
        total = 0
        for i in range(lo, hi):
            total += lens[i]
        failed[d] = -1
        c = 0
        while c < len(kinds):
            n = ns[c]
            m = hi - lo - n + 1
            share = 0.0
            if m > 0:
                stamp += 1
                mask = _mask_for(m)
                for w in range(m):
                    g = np.uint64(0)
                    for k in range(n):
                        g += h[lo + w + k] * coefs[c, k]
                    slot, _ = _insert(keys, stamps, counts, mask, stamp, g)
                    slots[w] = slot
                if kinds[c] == 0:
                    best_count, best_chars = 1, 0
                    chars = 0
                    for k in range(n):
                        chars += lens[lo + k]
                    for w in range(m):
                        if w:
                            chars += lens[lo + w + n - 1] - lens[lo + w - 1]
                        cnt = counts[slots[w]]
                        if cnt > best_count or (cnt == best_count and cnt > 1
                                                and chars > best_chars):
                            best_count, best_chars = cnt, chars
                    share = best_count * best_chars / max(total, 1) if best_count > 1 else 0.0
                else:
                    covered_until = 0
                    covered = 0
                    for w in range(hi - lo):
                        if w < m and counts[slots[w]] > 1:
                            covered_until = w + n
                        if w < covered_until:
                            covered += lens[lo + w]
                    share = covered / max(total, 1)
            if share > thresholds[c]:
                failed[d] = c
                shares[d] = share
                break
            if kinds[c] == 1 and share <= later_min[c]:
                break  # the duplicated share only falls as n grows: no later check can fail
            c += 1


def repetition(doc: np.ndarray, h: np.ndarray, lens: np.ndarray, num_docs: int,
               checks: list[tuple[str, int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(index of the first failed check or -1, its share) per document, from ``tokens``'s
    output (``doc`` ascending). ``checks``: (``"top"`` or ``"dup"``, n, threshold), top checks
    first, each kind by n. An n-gram's hash is a polynomial over its tokens' hashes with odd
    coefficients drawn from ``n`` (as ``quality.window_hashes``)."""
    if any(k != "top" for k, _, _ in checks[:sum(k == "top" for k, _, _ in checks)]):
        raise ValueError(f"repetition: the top checks must come first: {checks}")
    starts = np.searchsorted(doc, np.arange(num_docs + 1)).astype(np.int64)
    width = max((n for _, n, _ in checks), default=1)
    coefs = np.zeros((len(checks), width), np.uint64)
    for c, (_, n, _) in enumerate(checks):
        coefs[c, :n] = odd_coefficients(n, seed=n)
    failed = np.full(num_docs, -1, np.int64)
    shares = np.zeros(num_docs, np.float64)
    thresholds = np.array([t for _, _, t in checks], np.float64)
    later_min = np.append(np.minimum.accumulate(thresholds[::-1])[::-1][1:], -np.inf)
    _repetition(starts, h, lens, np.array([k == "dup" for k, _, _ in checks], np.int64),
                np.array([n for _, n, _ in checks], np.int64), thresholds, later_min, coefs,
                failed, shares)
    return failed, shares


# --- MinHash ---------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def _minhash(hashes: np.ndarray, starts: np.ndarray, a: np.ndarray, b: np.ndarray,
             out: np.ndarray) -> None:
    for d in range(len(starts) - 1):
        row = out[d]
        row[:] = np.uint32(0xFFFFFFFF)
        for i in range(starts[d], starts[d + 1]):
            x = hashes[i]
            for p in range(len(a)):  # vectorised by LLVM across the permutations
                v = np.uint32((a[p] * x + b[p]) >> np.uint64(32))
                if v < row[p]:
                    row[p] = v


def minhash(hashes: np.ndarray, starts: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """(documents, num_perm) uint32 MinHash signatures of shingle hashes grouped by document
    (``starts``: each document's first index; a document with no shingle gets all-ones). Each
    permutation is a multiply-add-shift hash, the high 32 bits of ``a x + b`` mod 2**64 for a
    random odd ``a`` and a random ``b`` (Dietzfelbinger et al. 1997: universal)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2)
    out = np.empty((len(starts), num_perm), np.uint32)
    _minhash(hashes.astype(np.uint64), np.append(starts, len(hashes)).astype(np.int64), a, b,
             out)
    return out


@numba.njit(nogil=True, cache=True)
def _band_keys(sig: np.ndarray, rows: int, coef: np.ndarray, out: np.ndarray) -> None:
    for d in range(sig.shape[0]):
        for band in range(out.shape[1]):
            h = np.uint64(0)
            for j in range(rows):
                h += np.uint64(sig[d, band * rows + j]) * coef[j]
            out[d, band] = _mix(h)


def band_keys(sig: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """(documents, bands) uint64: a hash of each band of ``rows`` signature values (a
    polynomial with odd coefficients drawn from ``seed``, then splitmix64's finaliser)."""
    coef = odd_coefficients(rows, seed)
    out = np.empty((sig.shape[0], sig.shape[1] // rows), np.uint64)
    _band_keys(np.ascontiguousarray(sig), rows, coef, out)
    return out


@numba.njit(nogil=True, cache=True)
def _distinct_sorted(starts: np.ndarray, values: np.ndarray, out_starts: np.ndarray) -> int:
    o = 0
    for d in range(len(starts) - 1):
        out_starts[d] = o
        segment = np.sort(values[starts[d]:starts[d + 1]])
        for k in range(len(segment)):
            if k == 0 or segment[k] != segment[k - 1]:
                values[o] = segment[k]
                o += 1
    out_starts[len(starts) - 1] = o
    return o


def distinct_sorted(starts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each group ``values[starts[i]:starts[i + 1]]`` sorted with its repeats removed, as
    (new starts, values); ``starts`` ends with ``len(values)``."""
    values = values.copy()
    out_starts = np.empty(len(starts), np.int64)
    n = _distinct_sorted(starts.astype(np.int64), values, out_starts)
    return out_starts, values[:n]


@numba.njit(nogil=True, cache=True)
def _pair_jaccard(starts: np.ndarray, values: np.ndarray, a: np.ndarray, b: np.ndarray,
                  out: np.ndarray) -> None:
    for k in range(len(a)):
        i, i_end = starts[a[k]], starts[a[k] + 1]
        j, j_end = starts[b[k]], starts[b[k] + 1]
        both = 0
        while i < i_end and j < j_end:
            if values[i] == values[j]:
                both += 1
                i += 1
                j += 1
            elif values[i] < values[j]:
                i += 1
            else:
                j += 1
        union = (i_end - starts[a[k]]) + (j_end - starts[b[k]]) - both
        out[k] = both / union if union else 1.0


def pair_jaccard(starts: np.ndarray, values: np.ndarray, a: np.ndarray, b: np.ndarray
                 ) -> np.ndarray:
    """The Jaccard similarity of sets ``a[k]`` and ``b[k]``; set ``i`` is the sorted, distinct
    ``values[starts[i]:starts[i + 1]]``."""
    out = np.empty(len(a), np.float64)
    _pair_jaccard(starts.astype(np.int64), values, a.astype(np.int64), b.astype(np.int64), out)
    return out


def warm() -> None:
    """Compile (or load from the cache) every kernel on a few strings."""
    texts = pa.array(["Warm the kernels:  a\r\n\n\nb caf\u00e9 ...", None, ""])
    normalised = normalise(texts)
    row, h, lens = tokens(normalised)
    gopher_features(normalised, ["the"])
    repetition(row, h, lens, len(texts), [("top", 2, 0.2), ("dup", 5, 0.15)])
    band_keys(minhash(h, np.array([0], np.int64), 8, 0), 4, 0)
    pair_jaccard(*distinct_sorted(np.array([0, 1], np.int64), h[:1].astype(np.uint32)),
                 np.array([0]), np.array([0]))


if __name__ == "__main__":  # python -m pipeline.stages.ingest.kernels: fill the compile cache too
    warm()
