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
    """With ``tta``, the image, its two flips and its transpose are classified and their probabilities averaged
    (cells have no up, down, left or right); :meth:`scores` are then the log of the averaged probabilities."""

    def __init__(self, spec: InputSpec, backbone: Backbone, head: Head, class_names: list[str], tta: bool = False):
        super().__init__()
        self.spec = spec
        self.preprocess = Preprocess(spec)
        self.backbone = backbone
        self.head = head
        self.class_names = list(class_names)
        self.tta = tta
        self.register_buffer("temperature", torch.ones(()))  # set by temperature scaling on validation data

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """One view's logits (Grad-CAM explains these)."""
        return self.head(self.backbone(self.preprocess(x)))

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """What the probabilities are the softmax of: the logits, or with TTA the log of the views' mean."""
        if not self.tta:
            return self.logits(x)
        views = (x, x.flip(-1), x.flip(-2), x.transpose(-1, -2))
        return torch.stack([torch.log_softmax(self.logits(v), dim=1) for v in views]).exp().mean(0).log()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.scores(x) / self.temperature, dim=1)
