"""Which cells to label: the order ``bloodml suggest`` proposes, and the draws of the few-shot protocol.

Pure functions on arrays (no files, no model): the model's probabilities and backbone features of the unlabelled
cells, and their copy groups (exact and near copies share one). A copy group gives at most one cell.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split


def margin_uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """1 - (top probability - second): 1 where the model cannot choose between two classes, 0 where it is sure."""
    ordered = np.sort(probabilities, axis=1)
    second = ordered[:, -2] if probabilities.shape[1] > 1 else 0.0
    return 1.0 - (ordered[:, -1] - second)


def entropy(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities, 1e-12, 1.0)
    return -(p * np.log(p)).sum(1)


def one_per_group(groups: np.ndarray, uncertainty: np.ndarray) -> np.ndarray:
    """Positions of one cell per copy group: its most uncertain member (the first on ties)."""
    frame = pd.DataFrame({"group": groups, "u": -uncertainty, "i": np.arange(len(groups))})
    return np.sort(frame.sort_values(["u", "i"], kind="stable").drop_duplicates("group")["i"].to_numpy())


def suggest_order(features: np.ndarray, probabilities: np.ndarray, groups: np.ndarray, n: int,
                  uncertainty_weight: float = 0.5) -> list[int]:
    """Up to ``n`` positions to label first, in order. Classes take turns by the model's call (the class with the
    fewest picks so far goes next, so ``n`` >= the number of predicted classes covers every one); within a class
    the pick maximises ``uncertainty_weight`` x margin uncertainty + the rest x distance to the nearest cell
    already picked (k-centre on L2-normalised backbone features, scaled by the largest such distance), so picks are
    both hard for the model and unlike each other. One cell per copy group; deterministic."""
    if n <= 0 or not len(features):
        return []
    uncertainty = margin_uncertainty(probabilities)
    candidates = one_per_group(np.asarray(groups), uncertainty)
    x = features[candidates].astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    called = probabilities[candidates].argmax(1)
    u = uncertainty[candidates]
    nearest = np.full(len(candidates), np.inf)  # distance to the nearest pick
    free = np.ones(len(candidates), dtype=bool)
    picks: list[int] = []
    taken = {c: 0 for c in np.unique(called)}
    while len(picks) < n and free.any():
        open_classes = [c for c in taken if (free & (called == c)).any()]
        turn = min(open_classes, key=lambda c: (taken[c], c))
        pool = np.flatnonzero(free & (called == turn))
        finite = nearest[free][np.isfinite(nearest[free])]
        scale = finite.max() if len(finite) and finite.max() > 0 else 1.0
        spread = np.where(np.isfinite(nearest[pool]), nearest[pool] / scale, 1.0)
        best = pool[int(np.argmax(uncertainty_weight * u[pool] + (1 - uncertainty_weight) * spread))]
        picks.append(int(candidates[best]))
        free[best] = False
        taken[turn] += 1
        nearest = np.minimum(nearest, np.linalg.norm(x - x[best], axis=1))
    return picks


def labelling_pool(table: pd.DataFrame, seed: int, share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(pool rows, test rows): per class, about ``share`` of the copy groups form the pool the labelled cells are
    drawn from, the rest is the test part (stratified by class, group-aware, seeded). A class therefore never gives
    more than ``share`` of its cells to training."""
    groups = table.groupby("group")["label"].first()
    try:
        pool_groups, _ = train_test_split(groups.index.to_numpy(), train_size=share, stratify=groups.to_numpy(),
                                          random_state=seed)
    except ValueError:  # a class with a single group: split without stratifying
        pool_groups, _ = train_test_split(groups.index.to_numpy(), train_size=share, random_state=seed)
    in_pool = table["group"].isin(set(pool_groups)).to_numpy()
    return np.flatnonzero(in_pool), np.flatnonzero(~in_pool)


def per_class_budget(labels: pd.Series, k: int) -> dict[str, int]:
    """k cells per class, capped at the cells (one per copy group) a class has in the pool."""
    return {label: min(k, int(count)) for label, count in labels.value_counts().sort_index().items()}


def random_per_class(table: pd.DataFrame, rows: np.ndarray, k: int, seed: int) -> list[int]:
    """``k`` rows per class from ``rows`` (capped by what the class has), one per copy group, seeded."""
    rng = np.random.default_rng(seed)
    pool = table.iloc[rows].assign(row=rows).drop_duplicates("group")
    picks: list[int] = []
    for label, count in per_class_budget(pool["label"], k).items():
        members = pool.loc[pool["label"] == label, "row"].to_numpy()
        picks += [int(r) for r in rng.choice(members, size=count, replace=False)]
    return sorted(picks)
