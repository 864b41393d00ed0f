"""The segmenter: a small U-Net decoder on any registry backbone's encoder stages.

Input: float32 RGB in [0,1], (N,3,S,S); output: logits (N,3,S,S) over background / cytoplasm / nucleus (the
region codes of :mod:`bloodml.data.masks`). Normalisation is inside, so the logged model takes plain pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..models.registry import Backbone, stage_maps
from .cleanup import one_cell

N_REGIONS = 3  # background, cytoplasm, nucleus


class StageEncoder(nn.Module):
    """The backbone's feature maps at its stages (shallow to deep)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.body = backbone.body
        self.stages = list(backbone.stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return stage_maps(self.body, x, self.stages)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class CellSegmenter(nn.Module):
    def __init__(self, backbone: Backbone, width: int = 32):
        super().__init__()
        self.encoder = StageEncoder(backbone)
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1))
        with torch.no_grad():
            was_training = backbone.training
            channels = [m.shape[1] for m in self.encoder(torch.zeros(1, 3, 64, 64))]
            backbone.train(was_training)
        deep = channels[-1]
        self.up = nn.ModuleList()
        for skip in reversed(channels[:-1]):  # deepest first
            self.up.append(_block(deep + skip, width))
            deep = width
        self.out = nn.Conv2d(width, N_REGIONS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        maps = self.encoder((x - self.mean) / self.std)
        y = maps[-1]
        for block, skip in zip(self.up, reversed(maps[:-1])):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip.to(y.dtype)], 1))
        return F.interpolate(self.out(y), size=size, mode="bilinear", align_corners=False)


def to_input(rgb: np.ndarray, size: int) -> torch.Tensor:
    """An RGB array (H,W,3) uint8 -> the segmenter's input (1,3,S,S) float in [0,1]."""
    small = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    return torch.from_numpy(small.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def full_size(labels: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """A region map at the segmenter's size -> the image's own size (nearest neighbour)."""
    return np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((shape_hw[1], shape_hw[0]), Image.NEAREST))


class LoadedSegmenter:
    """An RGB image (H,W,3) uint8 -> its region map (H,W) uint8, through a logged segmenter (one cell kept:
    :func:`one_cell`)."""

    def __init__(self, predict, image_size: int, uri: str, regions: list[str], trained_on: list[str]):
        self.predict, self.image_size, self.uri = predict, int(image_size), uri
        self.regions, self.trained_on = list(regions), set(trained_on)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        logits = np.asarray(self.predict(to_input(rgb, self.image_size).numpy()))
        return full_size(one_cell(logits.argmax(1)[0].astype(np.uint8)), rgb.shape[:2])

    def __repr__(self) -> str:
        return f"segmenter {self.uri}"
