"""Backbone features for a frozen backbone: one forward pass per image and augmented view."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data.transforms import Preprocess, apply_mask, augment, to_float
from ..models.registry import Backbone


def network_input(images: torch.Tensor, regions: torch.Tensor, mask_mode: str) -> torch.Tensor:
    """uint8 images and region maps -> float [0,1] RGB with the mask mode applied (the exported model's input)."""
    return to_float(apply_mask(images, regions, mask_mode))


@torch.inference_mode()
def extract_features(backbone: Backbone, preprocess: Preprocess, images: torch.Tensor, regions: torch.Tensor,
                     mask_mode: str, batch_size: int = 64, desc: str = "features", progress: bool = True) -> torch.Tensor:
    backbone.eval()
    out = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        x = network_input(images[start:start + batch_size], regions[start:start + batch_size], mask_mode)
        out.append(backbone(preprocess(x).contiguous(memory_format=torch.channels_last)))
    return torch.cat(out) if out else torch.zeros(0, backbone.feature_dim)


def augmented_view(images: torch.Tensor, regions: torch.Tensor, transform, seed: int):
    """One augmented copy of every image, reproducible from ``seed`` and independent of global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return augment(images, regions, transform)
