"""Test-time adaptation without labels: AdaBN (Li et al., 2016). The batch-norm layers' running statistics are
re-estimated on the new images; every weight and every other buffer stays as trained."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def adapt_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose batch-norm running mean and variance are the exact averages over ``batches``
    (the model's inputs, on the model's device). Returns (adapted copy, number of batch-norm layers); a model
    without batch norm comes back unchanged with 0."""
    adapted = copy.deepcopy(model).eval()
    layers = batchnorm_layers(adapted)
    if not layers:
        return adapted, 0
    momenta = []
    for layer in layers:
        momenta.append(layer.momentum)
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over all batches, not an exponential one
        layer.train()
    seen = 0
    with torch.no_grad():
        for batch in batches:
            adapted(batch)
            seen += len(batch)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
        layer.eval()
    if not seen:
        raise ValueError("adapt_batchnorm needs at least one image")
    return adapted, len(layers)
