"""The one scoring path: probabilities + a call rule -> calls, confusion matrix, metrics with intervals and one
call per group. Training's test evaluation (report.py), `evaluate`, cross-dataset studies and the champion's
comparison all score through :func:`score` or :func:`point_scores`, and write the same tables. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..confusion import accuracy_from, balanced_accuracy_from, confusion_counts, macro_f1_from, mcc_from
from .calls import CallRule, called
from .groups import group_metrics, group_table
from .metrics import classification_metrics

POINT_SCORES = {"accuracy": accuracy_from, "balanced_accuracy": balanced_accuracy_from, "macro_f1": macro_f1_from,
                "mcc": mcc_from}


@dataclass(frozen=True)
class Scored:
    """What scoring one set of images gives: each image's call, the confusion matrix (rows true, columns called),
    the metrics (prefixed) and, with group IDs, one row per group (:func:`groups.group_table`)."""

    predicted: np.ndarray
    confusion: np.ndarray
    metrics: dict[str, float]
    groups: pd.DataFrame | None = None


def score(truth: np.ndarray, probabilities: np.ndarray, classes: list[str], prefix: str, rule: CallRule,
          n_boot: int = 1000, seed: int = 0, resample=None, group_ids=None, pooled: dict | None = None) -> Scored:
    """Calls by ``rule``, their confusion matrix, ``<prefix>`` metrics with 95 % intervals (``resample``: one ID
    per image whose groups the intervals resample whole) and, with ``group_ids``, a call per group with its
    ``<prefix>group_*`` metrics."""
    truth = np.asarray(truth)
    predicted = called(probabilities, rule.positive, rule.threshold)
    metrics = classification_metrics(truth, probabilities, prefix, classes, rule.positive, rule.threshold, n_boot,
                                     seed, resample)
    calls = None
    if group_ids is not None:
        calls = group_table(group_ids, truth, probabilities, classes, rule, pooled)
        metrics.update(group_metrics(calls, classes, prefix, rule, n_boot, seed))
    return Scored(predicted, confusion_counts(truth, predicted, len(classes)), metrics, calls)


def point_scores(truth: np.ndarray, probabilities: np.ndarray, rule: CallRule) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and MCC of the calls, without intervals (a study's many folds). The
    macro average runs over the classes these images hold or were called (as scikit-learn's): a class that one
    dataset lacks and that is never called does not count as a zero."""
    k = np.asarray(probabilities).shape[1]
    matrix = confusion_counts(np.asarray(truth), called(probabilities, rule.positive, rule.threshold), k)
    present = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    matrix = matrix[np.ix_(present, present)]
    return {name: of(matrix) for name, of in POINT_SCORES.items()}


def source_scores(truth: np.ndarray, probabilities: np.ndarray, rule: CallRule, sources,
                  prefix: str) -> dict[str, float]:
    """:func:`point_scores` of each source's images (``<prefix>source_<name>_<score>``) and their count; none when
    the images come from one source."""
    sources = np.asarray(sources)
    if len(set(sources)) < 2:
        return {}
    out = {}
    for name in sorted(set(sources)):
        rows = sources == name
        out.update({f"{prefix}source_{name}_{k}": v for k, v in
                    point_scores(np.asarray(truth)[rows], np.asarray(probabilities)[rows], rule).items()})
        out[f"{prefix}source_{name}_n"] = float(rows.sum())
    return out


def recall_per_class(confusion: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Each present class's recall (the diagonal over its row)."""
    return {name: float(confusion[i, i] / confusion[i].sum()) for i, name in enumerate(classes) if confusion[i].sum()}


def confusion_frame(confusion: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """The confusion matrix as every command writes it: rows ``true_<class>``, columns ``predicted_<class>``."""
    return pd.DataFrame(confusion, index=[f"true_{c}" for c in classes], columns=[f"predicted_{c}" for c in classes])


def predictions_frame(paths: list[str], truth: np.ndarray, probabilities: np.ndarray, classes: list[str],
                      predicted: np.ndarray) -> pd.DataFrame:
    """One row per image: file, true_label, predicted_label, p_<class>."""
    table = pd.DataFrame({"file": list(paths), "true_label": [classes[i] for i in truth],
                          "predicted_label": [classes[i] for i in predicted]})
    for i, name in enumerate(classes):
        table[f"p_{name}"] = np.asarray(probabilities)[:, i]
    return table
