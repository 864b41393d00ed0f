"""Classification metrics with 95 % confidence intervals, from true labels and predicted probabilities.

Proportions (accuracy, sensitivity, specificity) get Wilson score intervals; the others (balanced accuracy,
macro-F1, MCC, ROC-AUC) a percentile bootstrap over test images. When the images come in groups (patients,
smears: ``groups``), they are not independent, so every interval is a cluster bootstrap that resamples whole
groups. Pure functions; scikit-learn underneath.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm

from ..confusion import balanced_accuracy_from, confusion_counts, macro_f1_from, mcc_from
from .calls import called

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


def _resampler(n: int, groups, rng: np.random.Generator) -> Callable[[], np.ndarray]:
    """Draws of sample indices: n samples with replacement, or (with ``groups``) as many whole groups as there
    are, with replacement, each bringing all of its samples."""
    if groups is None:
        return lambda: rng.integers(0, n, size=n)
    _, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    return lambda: np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])


def bootstrap_interval(statistic: Callable[[np.ndarray, np.ndarray], float], y_true: np.ndarray,
                       scores: np.ndarray, n_boot: int = 1000, seed: int = 0, groups=None) -> tuple[float, float]:
    """Percentile bootstrap over samples, or over whole groups when ``groups`` (one ID per sample) is given;
    resamples where the statistic is undefined are skipped."""
    rng = np.random.default_rng(seed)
    draw = _resampler(len(y_true), groups, rng)
    values = []
    for _ in range(n_boot):
        index = draw()
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
                           threshold: float = 0.5, n_boot: int = 1000, seed: int = 0,
                           groups=None) -> dict[str, float]:
    """Headline metrics (+ ``_ci_low``/``_ci_high``), per-class precision/recall/F1, and for binary tasks
    ROC-AUC, sensitivity and specificity at ``threshold`` on the ``positive`` class's probability.

    ``groups`` (one ID per sample): intervals resample whole groups, and ``ci_groups`` says how many there were
    (0: intervals over images)."""
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    k = probabilities.shape[1]
    labels = np.arange(k)
    names = class_names or [str(i) for i in labels]
    binary = k == 2
    if binary and positive is None:
        positive = 1
    y_pred = called(probabilities, positive, threshold)
    n = len(y_true)
    out: dict[str, float] = {}
    if n == 0:
        return out

    def predicted(scores):
        return called(scores, positive, threshold)

    from_confusion = {"balanced_accuracy": balanced_accuracy_from, "macro_f1": macro_f1_from, "mcc": mcc_from}
    def proportion_interval(successes: int, total: int, hit: Callable, among: Callable):
        """Wilson over independent images; with groups, a cluster bootstrap of the same proportion."""
        if groups is None:
            return wilson_interval(successes, total)

        def share(t, s):
            base = among(t, s)
            return float(hit(t, s)[base].mean()) if base.any() else float("nan")
        return bootstrap_interval(share, y_true, probabilities, n_boot, seed, groups)

    everyone = lambda t, s: np.ones(len(t), dtype=bool)  # noqa: E731
    out["ci_groups"] = float(len(np.unique(np.asarray(groups, dtype=str)))) if groups is not None else 0.0
    correct = int((y_pred == y_true).sum())
    out["accuracy"] = correct / n
    out["accuracy_ci_low"], out["accuracy_ci_high"] = proportion_interval(
        correct, n, lambda t, s: predicted(s) == t, everyone)
    for name, from_cm in from_confusion.items():
        statistic = lambda t, s, f=from_cm: f(confusion_counts(t, predicted(s), k))  # noqa: E731
        out[name] = statistic(y_true, probabilities)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = bootstrap_interval(statistic, y_true, probabilities, n_boot,
                                                                           seed, groups)
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
        out["sensitivity_ci_low"], out["sensitivity_ci_high"] = proportion_interval(
            tp, n_pos, lambda t, s: predicted(s) == positive, lambda t, s: t == positive)
        out["specificity"] = tn / n_neg if n_neg else float("nan")
        out["specificity_ci_low"], out["specificity_ci_high"] = proportion_interval(
            tn, n_neg, lambda t, s: predicted(s) != positive, lambda t, s: t != positive)
        if n_pos and n_neg:
            auc = lambda t, s: roc_auc_fast(t == positive, s[:, positive])  # noqa: E731
            out["roc_auc"] = float(auc(y_true, probabilities))
            out["roc_auc_ci_low"], out["roc_auc_ci_high"] = bootstrap_interval(auc, y_true, probabilities, n_boot, seed,
                                                                               groups)
    return {f"{prefix}{key}": float(value) for key, value in out.items()}
