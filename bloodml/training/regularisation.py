"""L1/L2 penalties on the trained weight tensors (biases and norm layers excluded)."""

from __future__ import annotations

from typing import Iterable

import torch


def penalised(parameters: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """Weight matrices and kernels only (ndim > 1) that are being trained."""
    return [p for p in parameters if p.requires_grad and p.ndim > 1]


def penalty(parameters: Iterable[torch.Tensor], l1: float, l2: float) -> torch.Tensor:
    """``l1 * sum|w| + l2 * sum w^2`` over the given tensors (Keras' kernel_regularizer convention)."""
    total = torch.zeros(())
    for weight in parameters:
        if l1:
            total = total + l1 * weight.abs().sum()
        if l2:
            total = total + l2 * weight.pow(2).sum()
    return total
