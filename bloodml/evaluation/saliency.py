"""Grad-CAM (the ``grad-cam`` package) and how much of it falls on the cell: relevance mass and pointing game.

Each figure comes with its chance level: a saliency map spread uniformly (or a random point) lands in the cell in
proportion to the cell's share of the image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def relevance_mass(saliency: np.ndarray, inside: np.ndarray) -> float:
    """Share of the positive saliency that lies inside the mask (Arras et al. 2022)."""
    positive = np.clip(saliency, 0, None)
    total = positive.sum()
    return float(positive[inside].sum() / total) if total > 0 else float("nan")


def pointing_hit(saliency: np.ndarray, inside: np.ndarray) -> float:
    """1 if the saliency maximum falls inside the mask, else 0 (the pointing game; ties: any maximum inside)."""
    peak = saliency.max()
    return float(bool(inside[saliency == peak].any()))


def chance_level(inside: np.ndarray) -> float:
    """Expected relevance mass / pointing hit rate of saliency that ignores the image: the mask's area share."""
    return float(inside.mean())


class _Logits(nn.Module):
    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier.logits(x)


def gradcam_maps(classifier, inputs: torch.Tensor, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of the predicted class on the backbone's registered last convolutional layer.

    Returns (maps (N,H,W) in [0,1] at input size, predicted class per image)."""
    from pytorch_grad_cam import GradCAM

    classifier.eval()
    layer = classifier.backbone.submodule(classifier.backbone.gradcam_layer)
    wrapped = _Logits(classifier).eval()
    maps, predicted = [], []
    with GradCAM(model=wrapped, target_layers=[layer]) as cam:
        for start in range(0, len(inputs), batch):
            # A frozen backbone has no parameter gradients: let the input carry them to the target layer.
            chunk = inputs[start:start + batch].clone().requires_grad_(True)
            maps.append(cam(input_tensor=chunk, targets=None))
            predicted.append(cam.outputs.argmax(dim=1).detach().cpu().numpy())
    return np.concatenate(maps), np.concatenate(predicted)


BLANK = "blank"  # a map with no positive saliency: it points at nothing


def image_scores(saliency: np.ndarray, region: np.ndarray, masked: bool) -> dict[str, float] | str | None:
    """One image's relevance mass, pointing-game hit and chance level inside the cell (cytoplasm + nucleus);
    None without a usable mask (none, empty or the whole image), :data:`BLANK` for a map with no positive saliency."""
    inside = region > 0
    if not masked or not inside.any() or inside.all():
        return None
    if not (saliency > 0).any():
        return BLANK
    return {"relevance_mass": relevance_mass(saliency, inside), "pointing_hit": pointing_hit(saliency, inside),
            "chance": chance_level(inside)}


def saliency_scores(maps: np.ndarray, regions: np.ndarray, has_mask: np.ndarray) -> dict[str, float]:
    """Mean relevance mass and pointing-game hit rate inside the cell, with chance levels, over the images with a
    usable mask. A blank map is counted (``saliency_blank_maps``) and left out of the measures. Empty when no image
    has a usable mask."""
    per_image = [image_scores(*item) for item in zip(maps, regions, has_mask)]
    scored = [s for s in per_image if isinstance(s, dict)]
    blank = sum(s == BLANK for s in per_image)
    if not scored and not blank:
        return {}
    scores = {"saliency_images": float(len(scored)), "saliency_blank_maps": float(blank)}
    if scored:
        chance = float(np.mean([s["chance"] for s in scored]))
        scores.update({"saliency_relevance_mass": float(np.mean([s["relevance_mass"] for s in scored])),
                       "saliency_relevance_chance": chance,
                       "saliency_pointing_game": float(np.mean([s["pointing_hit"] for s in scored])),
                       "saliency_pointing_chance": chance})
    return scores
