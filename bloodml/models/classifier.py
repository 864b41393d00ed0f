"""The model users get: preprocessing + backbone + head in one module, probabilities out.

Input: float32 RGB in [0, 1], shape (N, 3, S, S), already resized and masked as its :class:`InputSpec` says
(``spec.network_input``; bloodml predict does that). Output: class probabilities (N, C), in the order of
``class_names``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.input_spec import InputSpec
from ..data.transforms import Preprocess
from .head import Head
from .registry import Backbone


class BloodCellClassifier(nn.Module):
    def __init__(self, spec: InputSpec, backbone: Backbone, head: Head, class_names: list[str]):
        super().__init__()
        self.spec = spec
        self.preprocess = Preprocess(spec)
        self.backbone = backbone
        self.head = head
        self.class_names = list(class_names)
        self.register_buffer("temperature", torch.ones(()))  # set by temperature scaling on validation data

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.preprocess(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x) / self.temperature, dim=1)
