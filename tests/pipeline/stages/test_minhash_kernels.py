"""The MinHash kernels (``ingest/minhash_kernels.py``): signatures that estimate Jaccard without
bias, and the exact Jaccard of sorted sets."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.stages.ingest import minhash_kernels


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
        sig = minhash_kernels.minhash(np.concatenate([base, other]), np.array([0, 2000]), 256,
                                      trial)
        errors.append((sig[0] == sig[1]).mean() - (2000 - cut) / (2000 + cut))
    assert sig.dtype == np.uint32
    assert abs(np.mean(errors)) < 0.015 and np.std(errors) < 0.04  # binomial sd <= 0.031


def test_pair_jaccard_is_the_jaccard_of_the_sets() -> None:
    rng = np.random.default_rng(0)
    sets = [np.unique(rng.integers(0, 60, rng.integers(0, 40))).astype(np.uint64)
            for _ in range(30)]
    starts = np.cumsum([0] + [len(x) for x in sets])
    a, b = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    got = minhash_kernels.pair_jaccard(starts, np.concatenate(sets), a, b)
    for k in range(200):
        x, y = set(sets[a[k]].tolist()), set(sets[b[k]].tolist())
        assert got[k] == (len(x & y) / len(x | y) if x | y else 1.0)
