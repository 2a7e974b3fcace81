"""Compiled MinHash kernels (``kernels.py`` says what they share and how they are cached):
signatures of shingle hashes, LSH band keys, and the exact Jaccard check of near-duplicate
candidates (``dedup.py``)."""

from __future__ import annotations

import numba
import numpy as np

from pipeline.stages.ingest.kernels import mix, odd_coefficients

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
            out[d, band] = mix(h)


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
