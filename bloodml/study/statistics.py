"""Paired comparisons across folds: the corrected resampled t-test (Nadeau & Bengio 2003) with a CI for the mean
difference, the Wilcoxon signed-rank test as a rank-based check, and a plain-language verdict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Comparison:
    question: str
    a: str
    b: str
    metric: str
    mean_difference: float  # mean of (b - a) over folds
    ci_low: float
    ci_high: float
    t: float
    p_value: float
    wilcoxon_p: float
    n_folds: int
    label_a: str = ""  # short names for the verdict (the factor's levels)
    label_b: str = ""

    def verdict(self) -> str:
        a, b = self.label_a or self.a, self.label_b or self.b
        if not np.isfinite(self.ci_low):
            return f"{b} vs {a}: not enough folds to compare"
        if self.ci_low <= 0 <= self.ci_high:
            return (f"no detectable difference between {b} and {a} in {self.metric} "
                    f"(difference {self.mean_difference:+.3f}, 95% CI {self.ci_low:+.3f} to {self.ci_high:+.3f})")
        if self.mean_difference > 0:
            better, worse, low, high = b, a, self.ci_low, self.ci_high
        else:  # state the interval in the direction of the claim
            better, worse, low, high = a, b, -self.ci_high, -self.ci_low
        return (f"{better} beats {worse} in {self.metric} by {abs(self.mean_difference):.3f} "
                f"(95% CI {low:+.3f} to {high:+.3f}, corrected t-test p={self.p_value:.3g})")


def corrected_resampled_t(differences: np.ndarray, test_train_ratio: float, confidence: float = 0.95):
    """Nadeau-Bengio: variance inflated by (1/J + n_test/n_train) for overlapping training sets.

    Returns (mean, ci_low, ci_high, t, two-sided p)."""
    d = np.asarray(differences, dtype=float)
    j = len(d)
    mean = float(d.mean()) if j else float("nan")
    if j < 2:
        return mean, float("nan"), float("nan"), float("nan"), float("nan")
    variance = float(d.var(ddof=1))
    se = np.sqrt((1.0 / j + test_train_ratio) * variance)
    if se == 0:
        return mean, mean, mean, (float("inf") if mean else 0.0) * np.sign(mean or 1), 0.0 if mean else 1.0
    t = mean / se
    p = float(2 * stats.t.sf(abs(t), df=j - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=j - 1) * se)
    return mean, mean - half, mean + half, float(t), p


def compare(question: str, a: str, b: str, metric: str, scores_a: np.ndarray, scores_b: np.ndarray,
            test_train_ratio: float, label_a: str = "", label_b: str = "") -> Comparison:
    """Paired comparison of two configurations' per-fold scores (same folds, same order)."""
    d = np.asarray(scores_b, dtype=float) - np.asarray(scores_a, dtype=float)
    mean, low, high, t, p = corrected_resampled_t(d, test_train_ratio)
    try:
        wilcoxon_p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) and len(d) >= 2 else 1.0
    except ValueError:
        wilcoxon_p = float("nan")
    return Comparison(question, a, b, metric, mean, low, high, t, p, wilcoxon_p, len(d), label_a, label_b)


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, std, ci_low, ci_high) across folds (t interval; folds are not independent, so read it as a guide)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()) if len(v) else float("nan"), float("nan"), float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, df=len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.std(ddof=1)), float(v.mean() - half), float(v.mean() + half)
