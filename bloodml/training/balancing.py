"""Class balancing inside the training split only: oversampling indices or class weights for the loss."""

from __future__ import annotations

import numpy as np
import torch


def oversample_indices(labels: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Every training image once, plus random extra draws of each class up to ``target`` (0: majority count).

    A class larger than the target keeps all its images (nothing is thrown away). Returns shuffled indices.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    goal = target or int(counts.max())
    chosen = [np.arange(len(labels))]
    for cls, count in zip(classes, counts):
        if count < goal:
            members = np.flatnonzero(labels == cls)
            chosen.append(rng.choice(members, size=goal - count, replace=True))
    order = np.concatenate(chosen)
    return order[rng.permutation(len(order))]


def epoch_indices(labels: np.ndarray, mode: str, target: int, rng: np.random.Generator) -> np.ndarray:
    if mode == "oversample":
        return oversample_indices(labels, target, rng)
    return rng.permutation(len(labels))


def epoch_length(labels: np.ndarray, mode: str, target: int) -> int:
    """How many draws :func:`epoch_indices` makes per epoch (known before drawing: schedules need it)."""
    labels = np.asarray(labels)
    if mode != "oversample" or not len(labels):
        return len(labels)
    _, counts = np.unique(labels, return_counts=True)
    goal = target or int(counts.max())
    return int(sum(max(int(c), goal) for c in counts))


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """'balanced' weights n / (k * n_c), as scikit-learn computes them; absent classes get weight 0."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)
