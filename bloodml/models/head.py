"""The new classification head trained on top of a backbone's pooled features."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Head(nn.Module):
    """Dropout and a linear layer; with ``standardise``, the features are first standardised by a batch norm
    without affine parameters (batch statistics in training, their running averages after), for features whose
    channels differ widely in scale (``features=stages``). A training batch of one image uses the running
    averages: its own statistics would be undefined."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0, standardise: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features, affine=False) if standardise else None
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.norm is not None and self.training and features.shape[0] == 1:
            features = F.batch_norm(features, self.norm.running_mean, self.norm.running_var, training=False,
                                    eps=self.norm.eps)
        elif self.norm is not None:
            features = self.norm(features)
        return self.linear(self.dropout(features))


def head_for(backbone, num_classes: int, dropout: float = 0.0) -> Head:
    """The head a backbone's features need: standardised where they are pooled stage maps (features=stages)."""
    return Head(backbone.feature_dim, num_classes, dropout, standardise=backbone.features == "stages")
