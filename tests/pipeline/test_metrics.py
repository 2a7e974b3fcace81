from __future__ import annotations

import math

import pytest

from pipeline.metrics import bits_per_byte, classification_report, perplexity


def test_classification_report_hand_checked() -> None:
    # true: 0 0 0 1 1 2 ; pred: 0 0 1 1 0 2
    r = classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 0, 2], num_classes=4)
    assert r["accuracy"] == pytest.approx(4 / 6)
    # class 0: P=2/3 R=2/3 F1=2/3; class 1: P=1/2 R=1/2 F1=1/2; class 2: F1=1; class 3 absent
    assert r["per_class_f1"][:3] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert r["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert r["majority_rate"] == pytest.approx(3 / 6)
    assert r["confusion"][0] == [2, 1, 0, 0] and r["support"] == [3, 2, 1, 0]


def test_never_predicted_class_scores_zero() -> None:
    r = classification_report([0, 1], [0, 0], num_classes=2)
    assert r["per_class_f1"] == pytest.approx([2 / 3, 0.0])
    assert r["macro_f1"] == pytest.approx(1 / 3)


def test_perplexity_and_bits_per_byte() -> None:
    assert perplexity(10 * math.log(4), 10) == pytest.approx(4.0)
    assert bits_per_byte(8 * math.log(2), 4) == pytest.approx(2.0)
