"""Classification metrics from true labels and predicted probabilities (scikit-learn underneath)."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Headline metrics for one split. ``probabilities`` is (N, C); labels are class indices."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(probabilities).argmax(axis=1)
    labels = np.arange(np.asarray(probabilities).shape[1])
    result = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred) if len(y_true) else float("nan"),
        "macro_f1": skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
        "loss": skm.log_loss(y_true, np.clip(probabilities, 1e-12, 1), labels=labels) if len(y_true) else float("nan"),
    }
    return {f"{prefix}{k}": float(v) for k, v in result.items()}


def majority_rate(y_true: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent class (the floor any model must beat)."""
    counts = np.bincount(np.asarray(y_true))
    return float(counts.max() / counts.sum()) if counts.sum() else float("nan")
