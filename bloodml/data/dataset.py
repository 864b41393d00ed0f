"""Preloading: every image decoded once, resized, and kept as uint8 tensors with its region map."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from .images import read_rgb
from .masks import load_regions


@dataclass
class ImageSet:
    """N images at one size: ``images`` (N,3,S,S) uint8 RGB, ``regions`` (N,S,S) uint8, ``has_mask`` (N,) bool."""

    images: torch.Tensor
    regions: torch.Tensor
    has_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.regions[index], self.has_mask[index], self.labels[index])


def load_sample(path: str, mask_path: str | None, size: int, mask_codes: dict | None):
    """One image (3,S,S) uint8 and its region map (S,S) uint8 (zeros, has_mask False, when there is no mask).

    Memoised per process on the files' paths, sizes and modification times (studies load the same images for
    every fold and configuration); a changed file is read again."""
    codes_key = tuple(sorted(mask_codes.items())) if mask_codes else None
    stamp = tuple(_stat(p) for p in (path, mask_path))
    return _load_sample(path, mask_path, size, codes_key, stamp)


def _stat(path: str | None):
    if not path:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


@functools.lru_cache(maxsize=20_000)
def _load_sample(path: str, mask_path: str | None, size: int, codes_key, stamp):
    mask_codes = dict(codes_key) if codes_key else None
    rgb = read_rgb(path)
    regions = None
    if mask_path:
        regions = load_regions(mask_path, rgb.shape[:2], mask_codes)
    image = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    if regions is None:
        region_map = np.zeros((size, size), dtype=np.uint8)
    else:
        region_map = np.asarray(Image.fromarray(regions).resize((size, size), Image.NEAREST))
    return torch.from_numpy(image.copy()).permute(2, 0, 1), torch.from_numpy(region_map.copy()), regions is not None


def preload(table: pd.DataFrame, classes: list[str], size: int, mask_codes: dict | None = None,
            progress: bool = True) -> ImageSet:
    images, regions, has_mask = [], [], []
    rows = table[["path", "mask_path"]].itertuples(index=False)
    for path, mask_path in tqdm(rows, total=len(table), desc="loading images", disable=not progress, leave=False):
        image, region, found = load_sample(path, mask_path if isinstance(mask_path, str) else None, size, mask_codes)
        images.append(image)
        regions.append(region)
        has_mask.append(found)
    index = {name: i for i, name in enumerate(classes)}
    labels = torch.tensor([index[label] for label in table["label"]], dtype=torch.long)
    return ImageSet(torch.stack(images), torch.stack(regions), torch.tensor(has_mask), labels)
