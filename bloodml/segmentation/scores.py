"""Dice and IoU of predicted vs expert region maps, per image and per region, with bootstrap intervals over images.

Regions scored: ``cell`` (cytoplasm or nucleus, against background) and ``nucleus``. Pure numpy."""

from __future__ import annotations

import numpy as np

from ..data.masks import CYTOPLASM, NUCLEUS

SCORED = {"cell": (CYTOPLASM, NUCLEUS), "nucleus": (NUCLEUS,)}


def overlap(predicted: np.ndarray, expert: np.ndarray) -> tuple[float, float]:
    """(Dice, IoU) of two boolean masks; both empty counts as perfect agreement."""
    predicted, expert = predicted.astype(bool), expert.astype(bool)
    both = np.logical_and(predicted, expert).sum()
    total = predicted.sum() + expert.sum()
    union = np.logical_or(predicted, expert).sum()
    if total == 0:
        return 1.0, 1.0
    return float(2 * both / total), float(both / union)


def per_image(predicted: np.ndarray, expert: np.ndarray) -> dict[str, np.ndarray]:
    """Region maps (N,H,W) -> {'<region>_dice': (N,), '<region>_iou': (N,)} for each scored region."""
    out: dict[str, list[float]] = {}
    for region, codes in SCORED.items():
        for p, e in zip(predicted, expert):
            dice, iou = overlap(np.isin(p, codes), np.isin(e, codes))
            out.setdefault(f"{region}_dice", []).append(dice)
            out.setdefault(f"{region}_iou", []).append(iou)
    return {k: np.array(v) for k, v in out.items()}


def summarise(scores: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean of each per-image score and its 95 % percentile bootstrap interval over images."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, values in scores.items():
        if not len(values):
            continue
        draws = rng.integers(0, len(values), size=(n_boot, len(values)))
        means = values[draws].mean(1)
        out[name] = float(values.mean())
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    return out
