"""Cache keys: everything that changes a feature changes its key, and nothing else does.

model key = backbone name + the stages it pools (features=stages) + weights (every tensor) + preprocessing (modes
            and fitted statistics) + mask mode;
image key = the preloaded image's pixels and its region map (so its size and mask count);
view key  = the augmentation (every magnitude) + the view number + the seed, or "plain".
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def _update_with_state(digest, module: nn.Module) -> None:
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())


def model_key(backbone_name: str, backbone: nn.Module, preprocess: nn.Module, mask_mode: str) -> str:
    digest = hashlib.sha256(f"bloodml-features-v1|{backbone_name}|{mask_mode}|".encode())
    pooled = getattr(backbone, "pooled", [])
    if pooled:  # features=stages (final features keep the keys they always had)
        digest.update(f"stages={','.join(pooled)}|".encode())
    digest.update(f"{preprocess.color_space}|{preprocess.stain_norm}|{preprocess.normalize}|".encode())
    _update_with_state(digest, preprocess)
    _update_with_state(digest, backbone)
    return digest.hexdigest()[:32]


def image_keys(images: torch.Tensor, regions: torch.Tensor) -> list[str]:
    keys = []
    for image, region in zip(images, regions):
        digest = hashlib.sha256(str(tuple(image.shape)).encode())
        digest.update(image.contiguous().numpy().tobytes())
        digest.update(region.contiguous().numpy().tobytes())
        keys.append(digest.hexdigest()[:32])
    return keys


def view_key(transform, view: int, seed: int) -> str:
    if transform is None:
        return "plain"
    return hashlib.sha256(f"{transform!r}|{view}|{seed}".encode()).hexdigest()[:24]


def per_image_seed(seed: int, view: int, key: str) -> int:
    """The seed of one image's view: independent of which other images are in the batch or the split."""
    return int(hashlib.sha256(f"{seed}|{view}|{key}".encode()).hexdigest()[:15], 16)
