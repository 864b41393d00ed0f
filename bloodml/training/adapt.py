"""Adapting a trained head to a new instrument with a few labelled cells, on frozen-backbone features.

Two strategies, both starting from the trained head and running a fixed number of epochs (a handful of target
cells leaves nothing to stop early on):

- ``joint``: the source images the model was trained on plus the target cells, each target cell counting as
  ``target_weight`` source images (it is drawn that many times per epoch, each time one of its augmented views);
- ``head``: the target cells alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from ..compute import CPU, Compute
from ..models.head import Head
from .loop import FitResult, HeadTrainer, TrainSettings, fit

STRATEGIES = ("joint", "head")


@dataclass(frozen=True)
class AdaptSettings:
    adapt_strategy: str = "joint"
    target_weight: float = 5.0  # joint: one target cell counts as this many source images
    adapt_epochs: int = 10


def weighted_union(source_features: torch.Tensor, source_labels: torch.Tensor, target_features: torch.Tensor,
                   target_labels: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Source rows plus each target row repeated round(``weight``) times (at least once): (views, N, D), (N,)."""
    times = max(int(round(weight)), 1)
    features = torch.cat([source_features, target_features.repeat(1, times, 1)], dim=1)
    labels = torch.cat([source_labels, target_labels.repeat(times)])
    return features, labels


def adapt_head(head: Head, settings: AdaptSettings, train: TrainSettings, target_features: torch.Tensor,
               target_labels: torch.Tensor, source_features: torch.Tensor | None, source_labels: torch.Tensor | None,
               val_features: torch.Tensor, val_labels: torch.Tensor, num_classes: int, on_epoch=None,
               compute: Compute = CPU) -> tuple[Head, FitResult]:
    """A copy of ``head`` trained by ``settings.adapt_strategy`` for ``adapt_epochs`` epochs (the last epoch's
    weights are kept). ``*_features`` are (views, N, D); ``val_*`` are what each epoch reports (the source's
    validation images: how much of the source the adapted head keeps)."""
    adapted = copy.deepcopy(head)
    if settings.adapt_strategy == "joint":
        if source_features is None or source_labels is None:
            raise ValueError("adapt_strategy=joint needs the source images' features")
        features, labels = weighted_union(source_features, source_labels, target_features, target_labels,
                                          settings.target_weight)
    else:
        features, labels = target_features, target_labels
    fixed = replace(train, epochs=settings.adapt_epochs, patience=0, restore_best=False)
    trainer = HeadTrainer(adapted, features, labels, val_features, val_labels, num_classes, fixed, compute)
    result = fit(trainer, fixed, on_epoch)
    return adapted.eval(), result
