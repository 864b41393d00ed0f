"""One call per group (a patient, a smear) from its cells' probabilities, and group-level metrics.

Cells of one patient are not independent cases: the diagnosis belongs to the patient. Each group's cell
probabilities (N_g, C) become one group probability (C,) by a rule, then the group is called as a cell would be
(the positive class at ``threshold`` for binary tasks, else the most probable class). Group-level metrics treat
each group as one case, so their intervals are a bootstrap over groups. Pure functions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .calls import CallRule, called
from .metrics import classification_metrics

AGGREGATES = ("mean", "logodds", "topk", "share")  # fixed rules; "attention" is learnt (bloodml/patients)
LEARNT = ("attention",)


def aggregate(probabilities: np.ndarray, rule: str = "mean", top_k: int = 5, threshold: float = 0.5,
              positive: int | None = None) -> np.ndarray:
    """A group's probability (C,) from its cells' (N, C):

    - ``mean``: the mean of the cells' probabilities;
    - ``logodds``: the mean of their log-probabilities, renormalised (binary: the mean log-odds, as a probability);
    - ``topk``: binary, the mean positive probability of the ``top_k`` most positive cells; otherwise each class's
      mean over its ``top_k`` highest cells, renormalised;
    - ``share``: binary, the share of cells at or above ``threshold``; otherwise each class's share of the cells'
      votes (argmax)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or not len(p):
        raise ValueError("a group needs at least one cell's probabilities (N, C)")
    classes = p.shape[1]
    binary = classes == 2
    positive = 1 if positive is None else positive
    if rule == "mean":
        out = p.mean(0)
    elif rule == "logodds":
        logs = np.log(np.clip(p, 1e-7, 1.0)).mean(0)
        out = np.exp(logs - logs.max())
    elif rule == "topk":
        k = max(1, min(int(top_k), len(p)))
        if binary:
            score = np.sort(p[:, positive])[::-1][:k].mean()
            out = np.where(np.arange(2) == positive, score, 1 - score)
        else:
            out = np.sort(p, axis=0)[::-1][:k].mean(0)
    elif rule == "share":
        if binary:
            score = float((p[:, positive] >= threshold).mean())
            out = np.where(np.arange(2) == positive, score, 1 - score)
        else:
            out = np.bincount(p.argmax(1), minlength=classes).astype(np.float64)
    elif rule in LEARNT:
        raise ValueError(f"group_aggregate='{rule}' is learnt: its group probabilities come from the run's patient "
                         f"model, not from a rule")
    else:
        raise ValueError(f"group_aggregate='{rule}' is unknown; use one of {', '.join(AGGREGATES + LEARNT)}")
    out = np.asarray(out, dtype=np.float64)
    return out / out.sum() if out.sum() > 0 else np.full(classes, 1.0 / classes)


def group_table(groups, labels: np.ndarray | None, probabilities: np.ndarray, classes: list[str],
                rule: CallRule = CallRule(), pooled: dict | None = None) -> pd.DataFrame:
    """One row per group: ``group``, ``n_cells``, ``true_label`` (its cells' most common label; with
    ``mixed_labels`` counting the cells that carry another), ``p_<class>`` (the group probability, its cells pooled
    by ``rule.aggregate``) and ``predicted_label`` (the group called by ``rule``). ``labels`` None: no truth
    columns (new patients). ``pooled``: each group's probability (C,) from a patient model (a learnt pooling,
    covariates), used instead of ``rule.aggregate``."""
    groups = np.asarray(groups, dtype=object)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    positive = 1 if rule.positive is None and len(classes) == 2 else rule.positive
    rows = []
    for group in pd.unique(groups):
        members = np.flatnonzero(groups == group)
        p = (np.asarray(pooled[str(group)], dtype=np.float64) if pooled is not None else
             aggregate(probabilities[members], rule.aggregate, rule.top_k, rule.threshold, positive))
        call = int(called(p[None, :], positive, rule.threshold)[0])
        row = {"group": group, "n_cells": len(members)}
        if labels is not None:
            counts = np.bincount(np.asarray(labels)[members], minlength=len(classes))
            row.update(true_label=classes[int(counts.argmax())], mixed_labels=int(len(members) - counts.max()))
        row.update({f"p_{name}": float(v) for name, v in zip(classes, p)})
        row["predicted_label"] = classes[call]
        rows.append(row)
    return pd.DataFrame(rows)


def group_metrics(table: pd.DataFrame, classes: list[str], prefix: str, rule: CallRule = CallRule(),
                  n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Metrics over groups (each group one case; intervals: Wilson, or a bootstrap that resamples groups) from a
    :func:`group_table` with truth, as ``<prefix>group_<metric>``, and ``<prefix>groups`` (how many)."""
    if not len(table):
        return {f"{prefix}groups": 0.0}
    truth = np.array([classes.index(label) for label in table["true_label"]])
    probabilities = table[[f"p_{name}" for name in classes]].to_numpy()
    metrics = classification_metrics(truth, probabilities, f"{prefix}group_", classes, rule.positive, rule.threshold,
                                     n_boot, seed)
    metrics.pop(f"{prefix}group_ci_groups", None)
    metrics[f"{prefix}groups"] = float(len(table))
    return metrics


def group_line(metrics: dict[str, float], prefix: str, group_column: str, rule: str) -> str:
    """One line of group-level results (``<prefix>group_*``): accuracy and, for binary tasks, ROC-AUC with their
    intervals over groups."""
    def shown(name: str) -> str:
        key = f"{prefix}group_{name}"
        return f"{metrics[key]:.3f} ({metrics[key + '_ci_low']:.3f}-{metrics[key + '_ci_high']:.3f})"
    parts = [f"accuracy {shown('accuracy')}"] + ([f"ROC-AUC {shown('roc_auc')}"]
                                                 if f"{prefix}group_roc_auc" in metrics else [])
    return f"per {group_column} ({metrics[f'{prefix}groups']:.0f} groups, {rule} of their cells): " + ", ".join(parts)
