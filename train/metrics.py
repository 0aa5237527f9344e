"""Classification metrics for metrics.json (sklearn underneath) and confidence intervals.

``classification_report(labels, probs, label_names)`` returns the metrics.json body of
docs/contracts.md: accuracy, balanced accuracy, macro-F1, per-class P/R/F1, confusion matrix,
one-vs-rest AUROC, ECE and bootstrap 95% CIs for accuracy and macro-F1.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins (Guo et al. 2017).

    Written by hand: sklearn has no multi-class ECE (``calibration_curve`` is binary only).

    Args:
        labels: (N,) int true classes.
        probs: (N, C) predicted probabilities.
        n_bins: number of confidence bins over [0, 1].
    """
    conf = probs.max(axis=1)                                    # (N,)
    correct = (probs.argmax(axis=1) == labels).astype(float)    # (N,)
    bins = np.clip(np.ceil(conf * n_bins) - 1, 0, n_bins - 1).astype(int)  # bin i holds (i/n, (i+1)/n]
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def auroc_ovr(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro one-vs-rest AUROC over the classes present in ``labels`` (None if fewer than two)."""
    present = np.unique(labels)
    if len(present) < 2:
        return None
    if len(present) == probs.shape[1]:
        return float(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    # Some classes absent from this split: average the binary AUROC of the present ones.
    return float(np.mean([skm.roc_auc_score(labels == c, probs[:, c]) for c in present]))


def bootstrap_ci(labels: np.ndarray, preds: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                 num_classes: int | None = None) -> dict[str, list[float]]:
    """Percentile bootstrap 95% CIs of accuracy and macro-F1 (resampling test items).

    Args:
        labels: (N,) true classes.
        preds: (N,) predicted classes.
        n_resamples: bootstrap resamples (0 → CIs collapse to the point estimate).
        seed: RNG seed, so reports are reproducible.
        num_classes: classes for macro-F1 (default: max label + 1).
    """
    num_classes = num_classes or int(max(labels.max(), preds.max()) + 1)
    classes = np.arange(num_classes)
    acc = float((labels == preds).mean())
    f1 = float(skm.f1_score(labels, preds, labels=classes, average="macro", zero_division=0))
    if n_resamples <= 0 or len(labels) < 2:
        return {"accuracy": [acc, acc], "macro_f1": [f1, f1]}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(labels), size=(n_resamples, len(labels)))   # (R, N)
    accs = (labels[idx] == preds[idx]).mean(axis=1)
    f1s = _macro_f1_rows(labels[idx], preds[idx], num_classes)
    return {"accuracy": np.percentile(accs, [2.5, 97.5]).tolist(),
            "macro_f1": np.percentile(f1s, [2.5, 97.5]).tolist()}


def _macro_f1_rows(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 of every row of (R, N) label/prediction arrays at once.

    Vectorised for the bootstrap (one sklearn ``f1_score`` call per resample is ~1000x slower); equals
    ``f1_score(average="macro", labels=range(C), zero_division=0)``: F1_c = 2 TP / (#pred_c + #true_c).
    """
    f1 = np.zeros((labels.shape[0], num_classes))
    for c in range(num_classes):
        tp = ((labels == c) & (preds == c)).sum(axis=1)
        denom = (preds == c).sum(axis=1) + (labels == c).sum(axis=1)
        f1[:, c] = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return f1.mean(axis=1)


def classification_report(labels: np.ndarray, probs: np.ndarray, label_names: Sequence[str],
                          n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All metrics.json numbers for one split.

    Args:
        labels: (N,) int true classes.
        probs: (N, C) predicted probabilities (softmax of the logits).
        label_names: C class names.
        n_resamples: bootstrap resamples for the CIs.
        seed: bootstrap seed.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    preds = probs.argmax(axis=1)
    classes = np.arange(len(label_names))
    p, r, f, s = skm.precision_recall_fscore_support(labels, preds, labels=classes, zero_division=0)
    return {
        "n": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, preds)),
        "balanced_accuracy": _balanced_accuracy(labels, preds),
        "macro_f1": float(skm.f1_score(labels, preds, labels=classes, average="macro", zero_division=0)),
        "auroc": auroc_ovr(labels, probs),
        "ece": expected_calibration_error(labels, probs),
        "ci95": bootstrap_ci(labels, preds, n_resamples, seed, num_classes=len(label_names)),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(s[i])} for i, name in enumerate(label_names)},
        "confusion_matrix": skm.confusion_matrix(labels, preds, labels=classes).tolist(),
        "label_names": list(label_names),
    }


def _balanced_accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    import warnings

    with warnings.catch_warnings():  # sklearn warns when a predicted class is absent from labels
        warnings.simplefilter("ignore")
        return float(skm.balanced_accuracy_score(labels, preds))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval across seeds: ``(mean, lo, hi)``.

    With one value the interval collapses to the mean.
    """
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return (mean, mean, mean)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return (mean, mean - half, mean + half)
