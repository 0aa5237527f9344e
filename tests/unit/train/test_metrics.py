"""metrics.json numbers against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from train.metrics import bootstrap_ci, classification_report, expected_calibration_error, t_interval

NAMES = ["a", "b", "c"]


def _onehot_probs(preds, conf=0.8, c=3):
    p = np.full((len(preds), c), (1 - conf) / (c - 1))
    p[np.arange(len(preds)), preds] = conf
    return p


def test_report_hand_computed():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 2, 2])
    m = classification_report(labels, _onehot_probs(preds), NAMES, n_resamples=200)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recalls a 2/3, b 1/2, c 1 → balanced accuracy = mean
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # precisions a 1, b 1/2, c 1/2; F1 a 0.8, b 0.5, c 2/3
    assert m["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # every prediction has confidence 0.8, accuracy 4/6 → ECE = |0.8 - 2/3|
    assert m["ece"] == pytest.approx(abs(0.8 - 4 / 6))
    lo, hi = m["ci95"]["accuracy"]
    assert 0 <= lo <= m["accuracy"] <= hi <= 1
    assert m["label_names"] == NAMES


def test_auroc_perfect_and_reversed():
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[labels] * 0.7 + 0.1
    assert classification_report(labels, probs, NAMES, 0)["auroc"] == pytest.approx(1.0)
    assert classification_report(labels, (1 - probs) / 2, NAMES, 0)["auroc"] == pytest.approx(0.0)


def test_auroc_with_absent_class_averages_present_ones():
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]])
    assert classification_report(labels, probs, NAMES, 0)["auroc"] == pytest.approx(1.0)


def test_ece_two_bins_by_hand():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.4, 0.6]])
    # bin (0.9,1]: conf .95 acc 1 (2 items, one wrong label? labels 0,0 → both right) → |1-.95|
    # bin (0.533,0.6]: conf .6, acc 1/2 → |0.5-0.6|; weights 1/2 each
    assert expected_calibration_error(labels, probs, n_bins=15) == pytest.approx(0.5 * 0.05 + 0.5 * 0.1)


def test_bootstrap_ci_degenerate_and_reproducible():
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    assert bootstrap_ci(y, y, 100)["accuracy"] == [1.0, 1.0]
    assert bootstrap_ci(y, 1 - y, 100, seed=3) == bootstrap_ci(y, 1 - y, 100, seed=3)
    p = y.copy()
    p[:3] = 1 - p[:3]
    lo, hi = bootstrap_ci(y, p, 500)["accuracy"]
    assert lo < 5 / 8 < hi


def test_t_interval_hand_computed():
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)     # t_{0.975, 2} * sd / sqrt(n)
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert t_interval([0.5]) == (0.5, 0.5, 0.5)


def test_vectorised_macro_f1_equals_sklearn():
    from sklearn.metrics import f1_score

    from train.metrics import _macro_f1_rows

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, (20, 30)), rng.integers(0, 4, (20, 30))
    p[0] = 3                                            # a row predicting a single class
    want = [f1_score(a, b, labels=range(5), average="macro", zero_division=0) for a, b in zip(y, p)]
    assert _macro_f1_rows(y, p, 5) == pytest.approx(want)
