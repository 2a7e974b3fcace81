"""Compiled Gopher kernels (``kernels.py`` says what they share and how they are cached): the
quality and line/paragraph repetition features of ``quality.CHECKS`` in one pass per document,
and the word n-gram repetition shares of ``quality.ngram_repetition``."""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

from pipeline.stages.ingest.kernels import (
    FNV_OFFSET,
    FNV_PRIME,
    LETTER,
    decode,
    mix,
    odd_coefficients,
    unicode_tables,
    utf8_buffers,
)
from pipeline.stages.ingest.text_kernels import codepoint_hash


@numba.njit(inline="always")
def _bytes_hash(data: np.ndarray, lo: int, hi: int) -> np.uint64:
    h = FNV_OFFSET
    for i in range(lo, hi):
        h = (h ^ np.uint64(data[i])) * FNV_PRIME
    return mix(h)


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


@numba.njit(inline="always")
def _words(data: np.ndarray, lo: int, hi: int, flags: np.ndarray, lower: np.ndarray,
           stop: np.ndarray, stop_min: int, stop_max: int, seen_stop: np.ndarray
           ) -> tuple[int, int, int, int]:
    """(words, their code points, words holding a letter, distinct stop words) of the bytes
    ``lo:hi``: words are runs of non-space bytes."""
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
            cp, step = decode(data, i)
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
            h = mix(acc)
            for s in range(len(stop)):
                if stop[s] == h and not seen_stop[s]:
                    seen_stop[s] = True
                    n_stop += 1
    return n_words, word_chars, alpha, n_stop


@numba.njit(inline="always")
def _symbols(data: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """('#' characters, ellipses: "..." counted without overlap, and U+2026) of ``lo:hi``."""
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
    return hashes, ellipses


@numba.njit(inline="always")
def _lines(data: np.ndarray, lo: int, hi: int, bullets: np.ndarray, keys: np.ndarray,
           stamps: np.ndarray, counts: np.ndarray, mask: np.uint64, stamp: int
           ) -> tuple[int, int, int, int, int, int]:
    """(lines, their characters, distinct lines, their characters, lines ending in an
    ellipsis, lines opening with a bullet) of ``lo:hi``: the text between newlines, holding
    more than spaces. Distinct lines are counted in the table ``keys`` under ``stamp``."""
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
                cp, _ = decode(data, j)
                for bullet in bullets:
                    if cp == bullet:
                        bullet_lines += 1
                        break
            _, new = _insert(keys, stamps, counts, mask, stamp, _bytes_hash(data, start, i))
            if new:
                distinct += 1
                distinct_chars += c
        start = i + 1
    return n_lines, line_chars, distinct, distinct_chars, ellipsis_lines, bullet_lines


@numba.njit(inline="always")
def _paragraphs(data: np.ndarray, lo: int, hi: int, keys: np.ndarray, stamps: np.ndarray,
                counts: np.ndarray, mask: np.uint64, stamp: int) -> tuple[int, int, int, int]:
    """(paragraphs, their characters, distinct paragraphs, their characters) of ``lo:hi``:
    split at a newline, any whitespace, and the last newline of that run."""
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
            _, new = _insert(keys, stamps, counts, mask, stamp, _bytes_hash(data, start, end))
            if new:
                par_distinct += 1
                par_distinct_chars += c
        start = nxt
        i = nxt
    return n_par, par_chars, par_distinct, par_distinct_chars


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
        n_words, word_chars, alpha, n_stop = _words(data, lo, hi, flags, lower, stop,
                                                    stop_min, stop_max, seen_stop)
        hashes, ellipses = _symbols(data, lo, hi)
        mask = _mask_for(pieces[d])
        stamp += 1
        n_lines, line_chars, distinct, distinct_chars, ellipsis_lines, bullet_lines = _lines(
            data, lo, hi, bullets, keys, stamps, counts, mask, stamp)
        stamp += 1
        n_par, par_chars, par_distinct, par_distinct_chars = _paragraphs(
            data, lo, hi, keys, stamps, counts, mask, stamp)
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


@numba.njit(inline="always")
def _count_windows(h: np.ndarray, lo: int, m: int, coef: np.ndarray, keys: np.ndarray,
                   stamps: np.ndarray, counts: np.ndarray, slots: np.ndarray, stamp: int
                   ) -> None:
    """Count the ``m`` windows of ``len(coef)`` token hashes from ``h[lo]`` (each a polynomial
    with the coefficients ``coef``) under ``stamp``; ``slots[w]``: window w's slot."""
    mask = _mask_for(m)
    for w in range(m):
        g = np.uint64(0)
        for k in range(len(coef)):
            g += h[lo + w + k] * coef[k]
        slot, _ = _insert(keys, stamps, counts, mask, stamp, g)
        slots[w] = slot


@numba.njit(inline="always")
def _top_share(lens: np.ndarray, lo: int, n: int, m: int, counts: np.ndarray,
               slots: np.ndarray, total: int) -> float:
    """The most frequent n-gram's count times its characters, over ``total``; among the
    most frequent, the longest (0 when none repeats)."""
    best_count, best_chars = 1, 0
    chars = 0
    for k in range(n):
        chars += lens[lo + k]
    for w in range(m):
        if w:
            chars += lens[lo + w + n - 1] - lens[lo + w - 1]
        cnt = counts[slots[w]]
        if cnt > best_count or (cnt == best_count and cnt > 1 and chars > best_chars):
            best_count, best_chars = cnt, chars
    return best_count * best_chars / max(total, 1) if best_count > 1 else 0.0


@numba.njit(inline="always")
def _duplicated_share(lens: np.ndarray, lo: int, hi: int, n: int, m: int, counts: np.ndarray,
                      slots: np.ndarray, total: int) -> float:
    """The characters of the tokens inside an n-gram that occurs more than once, over
    ``total``."""
    covered_until = 0
    covered = 0
    for w in range(hi - lo):
        if w < m and counts[slots[w]] > 1:
            covered_until = w + n
        if w < covered_until:
            covered += lens[lo + w]
    return covered / max(total, 1)


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
                _count_windows(h, lo, m, coefs[c, :n], keys, stamps, counts, slots, stamp)
                if kinds[c] == 0:
                    share = _top_share(lens, lo, n, m, counts, slots, total)
                else:
                    share = _duplicated_share(lens, lo, hi, n, m, counts, slots, total)
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
