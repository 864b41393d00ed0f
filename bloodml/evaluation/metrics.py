"""Classification metrics with 95 % confidence intervals, from true labels and predicted probabilities.

Proportions (accuracy, sensitivity, specificity) get Wilson score intervals; the others (balanced accuracy,
macro-F1, MCC, ROC-AUC) a percentile bootstrap over test images. Pure functions; scikit-learn underneath.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (good at small n and near 0 or 1)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(statistic: Callable[[np.ndarray, np.ndarray], float], y_true: np.ndarray,
                       scores: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap over samples; resamples where the statistic is undefined are skipped."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    values = []
    for _ in range(n_boot):
        index = rng.integers(0, n, size=n)
        try:
            with warnings.catch_warnings():  # resamples missing a class are expected on small test sets
                warnings.simplefilter("ignore")
                value = statistic(y_true[index], scores[index])
        except ValueError:
            continue
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def majority_rate(y_true: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent class (the floor any model must beat)."""
    counts = np.bincount(np.asarray(y_true))
    return float(counts.max() / counts.sum()) if counts.sum() else float("nan")


def _predict(probabilities: np.ndarray, positive: int | None, threshold: float) -> np.ndarray:
    if positive is not None and probabilities.shape[1] == 2:
        return np.where(probabilities[:, positive] >= threshold, positive, 1 - positive)
    return probabilities.argmax(axis=1)


# Metrics from a confusion matrix (rows true, columns predicted): numpy only, so a 1000-resample bootstrap takes
# milliseconds. Each equals its scikit-learn counterpart (tests/test_metrics.py checks that).
def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(np.asarray(y_true) * k + np.asarray(y_pred), minlength=k * k).reshape(k, k)


def balanced_accuracy_from(cm: np.ndarray) -> float:
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else float("nan")


def macro_f1_from(cm: np.ndarray) -> float:
    tp = np.diag(cm).astype(float)
    denominator = cm.sum(axis=0) + cm.sum(axis=1)  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1.mean())


def mcc_from(cm: np.ndarray) -> float:
    t_sum, p_sum = cm.sum(axis=1).astype(float), cm.sum(axis=0).astype(float)
    n, correct = float(cm.sum()), float(np.trace(cm))
    cov_tp = correct * n - t_sum @ p_sum
    cov_pp, cov_tt = n * n - p_sum @ p_sum, n * n - t_sum @ t_sum
    return float(cov_tp / np.sqrt(cov_tt * cov_pp)) if cov_tt * cov_pp > 0 else 0.0


def roc_auc_fast(is_positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney form of the ROC AUC (ties count one half)."""
    n_pos = int(is_positive.sum())
    n_neg = len(is_positive) - n_pos
    if not n_pos or not n_neg:
        raise ValueError("ROC AUC needs both classes")
    ranks = rankdata(score)
    return float((ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, prefix: str = "",
                           class_names: list[str] | None = None, positive: int | None = None,
                           threshold: float = 0.5, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Headline metrics (+ ``_ci_low``/``_ci_high``), per-class precision/recall/F1, and for binary tasks
    ROC-AUC, sensitivity and specificity at ``threshold`` on the ``positive`` class's probability."""
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    k = probabilities.shape[1]
    labels = np.arange(k)
    names = class_names or [str(i) for i in labels]
    binary = k == 2
    if binary and positive is None:
        positive = 1
    y_pred = _predict(probabilities, positive if binary else None, threshold)
    n = len(y_true)
    out: dict[str, float] = {}
    if n == 0:
        return out

    def predicted(scores):
        return _predict(scores, positive if binary else None, threshold)

    from_confusion = {"balanced_accuracy": balanced_accuracy_from, "macro_f1": macro_f1_from, "mcc": mcc_from}
    correct = int((y_pred == y_true).sum())
    out["accuracy"] = correct / n
    out["accuracy_ci_low"], out["accuracy_ci_high"] = wilson_interval(correct, n)
    for name, from_cm in from_confusion.items():
        statistic = lambda t, s, f=from_cm: f(confusion_counts(t, predicted(s), k))  # noqa: E731
        out[name] = statistic(y_true, probabilities)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = bootstrap_interval(statistic, y_true, probabilities, n_boot,
                                                                           seed)
    clipped = np.clip(probabilities, 1e-12, 1)
    out["loss"] = float(skm.log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True), labels=labels))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                                         zero_division=0)
    for i, name in enumerate(names):
        out[f"precision_{name}"], out[f"recall_{name}"], out[f"f1_{name}"] = precision[i], recall[i], f1[i]
    if binary:
        pos_true = y_true == positive
        tp = int((pos_true & (y_pred == positive)).sum())
        tn = int((~pos_true & (y_pred != positive)).sum())
        n_pos, n_neg = int(pos_true.sum()), int((~pos_true).sum())
        out["sensitivity"] = tp / n_pos if n_pos else float("nan")
        out["sensitivity_ci_low"], out["sensitivity_ci_high"] = wilson_interval(tp, n_pos)
        out["specificity"] = tn / n_neg if n_neg else float("nan")
        out["specificity_ci_low"], out["specificity_ci_high"] = wilson_interval(tn, n_neg)
        if n_pos and n_neg:
            auc = lambda t, s: roc_auc_fast(t == positive, s[:, positive])  # noqa: E731
            out["roc_auc"] = float(auc(y_true, probabilities))
            out["roc_auc_ci_low"], out["roc_auc_ci_high"] = bootstrap_interval(auc, y_true, probabilities, n_boot, seed)
    return {f"{prefix}{key}": float(value) for key, value in out.items()}
