"""The statistics over the held-out scores: bits-per-byte per slice and source, the paired
changes between models, and their bootstrap over the held-out clusters.

Kept apart from ``scoring.py`` on purpose: a model's scores are memoised under the code version
of the scoring module (``memo.py``), and how they are summed and resampled does not change
them, so editing this file re-keys the evaluate step but keeps every memoised score.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from pipeline.metrics import bits_per_byte, perplexity
from pipeline.stages.evaluate.scoring import DocScore


def bootstrap_weights(clusters: np.ndarray, samples: int, seed: int = 0) -> np.ndarray:
    """A cluster bootstrap as ``samples`` x documents weights: each replicate draws as many
    clusters as there are, with replacement, and a document weighs as often as its cluster
    (``clusters``: one label per document; documents of one held-out group move together, so
    the spread is not understated where they are alike). One cluster per document is the
    document bootstrap. Fixed seed: the same replicates for every model, so differences are
    paired."""
    _, codes = np.unique(np.asarray(clusters), return_inverse=True)
    n = int(codes.max()) + 1 if len(codes) else 0
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=samples) \
        if n else np.zeros((samples, 0), dtype=int)
    return counts[:, codes].astype(float)


def _bpb_row(nll: np.ndarray, toks: np.ndarray, nbytes: np.ndarray, idx: np.ndarray,
             draws: np.ndarray | None) -> dict[str, float]:
    n, t, b = nll[idx].sum(), int(toks[idx].sum()), int(nbytes[idx].sum())
    row = {"perplexity": perplexity(float(n), t), "bits_per_byte": bits_per_byte(float(n), b),
           "tokens": t, "bytes": b}
    if draws is not None:
        row["bits_per_byte_se"] = float(np.std(
            draws @ nll[idx] / math.log(2) / (draws @ nbytes[idx]), ddof=1))
    return row


def slice_scores(scores: Sequence[tuple[float, int]], texts: list[str], sources: list[str],
                 is_general: list[bool], draws: dict[str, np.ndarray] | None = None
                 ) -> dict[str, dict[str, float]]:
    """Perplexity and bits-per-byte on the domain slice, the general slice and each source,
    from per-document (NLL, tokens); with ``draws`` (slice -> ``bootstrap_weights`` of that
    slice's documents) also the bootstrap standard error of bits-per-byte. ``DocScore``s add
    the masked figures: ``bits_per_byte_masked`` (``_se``), ``tokens_masked``,
    ``bytes_masked`` (bytes outside placeholder and URL spans)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (source, general) in enumerate(zip(sources, is_general, strict=True)):
        groups["general" if general else "domain"].append(i)
        groups[f"source:{source}"].append(i)
    nbytes = np.array([len(t.encode("utf-8")) for t in texts])
    columns = np.array([s[:2] for s in scores], dtype=float).reshape(-1, 2)
    masked = all(isinstance(s, DocScore) for s in scores)
    if masked:
        m = np.array([(s.nll_masked, s.tokens_masked, s.bytes_masked) for s in scores], float)
    out = {}
    for key in sorted(groups):
        idx, d = np.array(groups[key]), (draws or {}).get(key)
        row = {**_bpb_row(columns[:, 0], columns[:, 1], nbytes, idx, d), "docs": len(idx)}
        if masked:
            extra = _bpb_row(m[:, 0], m[:, 1], m[:, 2], idx, d)
            row.update({"bits_per_byte_masked": extra["bits_per_byte"],
                        "tokens_masked": extra["tokens"], "bytes_masked": extra["bytes"]})
            if "bits_per_byte_se" in extra:
                row["bits_per_byte_masked_se"] = extra["bits_per_byte_se"]
        out[key] = row
    return out


def paired_change(scores: Sequence[tuple[float, int]], reference: Sequence[tuple[float, int]],
                  idx: np.ndarray, draws: np.ndarray | None) -> tuple[float, float | None]:
    """Relative change of total NLL (= of bits-per-byte: same documents, same bytes) of
    ``scores`` over ``reference`` on documents ``idx``, and its bootstrap standard error."""
    change, resampled = paired_resamples([s[0] for s in scores], [s[0] for s in reference],
                                         idx, draws)
    return change, None if resampled is None else float(np.std(resampled, ddof=1))


def paired_resamples(nll: Sequence[float], reference: Sequence[float], idx: np.ndarray,
                     draws: np.ndarray | None) -> tuple[float, np.ndarray | None]:
    """The relative change of summed ``nll`` over ``reference`` on documents ``idx``, and the
    same change on each bootstrap replicate (rows of ``draws``: weights of ``idx``'s documents,
    ``bootstrap_weights``)."""
    a, b = np.asarray(nll, dtype=float)[idx], np.asarray(reference, dtype=float)[idx]
    change = float(a.sum() / b.sum() - 1.0)
    return change, None if draws is None else draws @ a / (draws @ b) - 1.0
