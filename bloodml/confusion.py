"""Scores from a confusion matrix (rows true, columns predicted), in numpy: the per-epoch validation scores of
training and the bootstrap of evaluation share them (neither package imports the other). Each equals its
scikit-learn counterpart (tests/test_metrics.py checks that)."""

from __future__ import annotations

import numpy as np


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(np.asarray(y_true) * k + np.asarray(y_pred), minlength=k * k).reshape(k, k)


def accuracy_from(cm: np.ndarray) -> float:
    return float(np.trace(cm) / max(cm.sum(), 1))


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
