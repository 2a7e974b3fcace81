"""Classification and language-model metrics, in numpy, checked against hand-computed cases."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """``m[i, j]`` counts examples of true class ``i`` predicted as ``j``."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int
                          ) -> dict[str, object]:
    """Accuracy, macro-F1 over classes present in ``y_true``, per-class F1, majority rate.

    A class absent from the test labels is left out of the macro average (its F1 is undefined),
    the convention of most papers; a present class that is never predicted scores F1 = 0.
    """
    m = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(m).astype(float)
    support = m.sum(axis=1)
    predicted = m.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    n = int(support.sum())
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "majority_rate": float(support.max() / n) if n else 0.0,
        "per_class_f1": f1.tolist(),
        "support": support.tolist(),
        "confusion": m.tolist(),
    }


def perplexity(nll_nats: float, n_tokens: int) -> float:
    return math.exp(min(nll_nats / max(n_tokens, 1), 50.0))


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Tokenizer-independent: total negative log-likelihood in bits over UTF-8 bytes."""
    return nll_nats / math.log(2) / max(n_bytes, 1)
