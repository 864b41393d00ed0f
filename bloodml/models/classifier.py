"""The model users get: preprocessing + backbone + head in one module, probabilities out.

Input: float32 RGB in [0, 1], shape (N, 3, S, S), already resized and masked as its :class:`InputSpec` says
(``spec.network_input``; bloodml predict does that). Output: class probabilities (N, C), in the order of
``class_names``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..inputs.input_spec import InputSpec
from ..inputs.transforms import Preprocess
from .head import Head
from .registry import Backbone


def tta_views(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The test-time augmentation views of a batch: itself, its two flips and its transpose. They act on the last
    two dimensions, so images (N,3,S,S) and their region maps (N,S,S) take the same views."""
    return (x, x.flip(-1), x.flip(-2), x.transpose(-1, -2))


def mean_probability_scores(view_logits: list[torch.Tensor]) -> torch.Tensor:
    """The log of the views' mean probabilities: what a TTA model's probabilities are the softmax of."""
    return torch.stack([torch.log_softmax(logits, dim=1) for logits in view_logits]).exp().mean(0).log()


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
        return mean_probability_scores([self.logits(view) for view in tta_views(x)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.scores(x) / self.temperature, dim=1)
