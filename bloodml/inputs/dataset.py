"""Preloading: every image decoded once, resized, and kept as uint8 tensors with its region map, as an
:class:`~bloodml.inputs.input_spec.InputSpec` says (size, mask codes, stray tolerance)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..errors import BloodmlError
from ..data.images import files_error, first_few, read_rgb
from .input_spec import InputSpec
from ..data.masks import crop_box, parse_mask_codes, read_regions

Segmenter = Callable[[np.ndarray], np.ndarray]  # an RGB image (H,W,3) uint8 -> its region map (H,W) uint8


@dataclass
class ImageSet:
    """N images at one size: ``images`` (N,3,S,S) uint8 RGB, ``regions`` (N,S,S) uint8, ``has_mask`` (N,) bool,
    ``strays`` (N,) the number of stray mask pixels that were filled from their neighbourhood."""

    images: torch.Tensor
    regions: torch.Tensor
    has_mask: torch.Tensor
    labels: torch.Tensor
    strays: torch.Tensor | None = None
    segmented: torch.Tensor | None = None  # (N,) bool: the region map was drawn by the segmenter

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        strays = self.strays[index] if self.strays is not None else None
        segmented = self.segmented[index] if self.segmented is not None else None
        return ImageSet(self.images[index], self.regions[index], self.has_mask[index], self.labels[index], strays,
                        segmented)


def load_sample(path: str, mask_path: str | None, spec: InputSpec, segmenter: Segmenter | None = None):
    """One image (3,S,S) uint8, its region map (S,S) uint8 (zeros when there is none), whether it has an expert
    mask, how many stray mask pixels were filled, and whether the segmenter drew its map.

    Region maps: the expert mask, unless ``spec.masks_from`` is ``model``; the ``segmenter`` (an RGB array -> region
    map callable) where there is none and the spec is masked and segmented. ``masks=crop/crop_cell`` crop the full
    image around the cell before resizing (a map with no cell: the whole image).

    Memoised per process on the files' paths, sizes and modification times (studies load the same images for
    every fold and configuration); a changed file is read again."""
    stamp = tuple(_stat(p) for p in (path, mask_path))
    use_expert = spec.masks_from != "model"
    segmenter = segmenter if spec.segmented else None
    return _load_sample(path, mask_path if use_expert else None, spec.image_size, spec.mask_codes,
                        spec.mask_stray_tolerance, spec.crop_margin if spec.cropped else None, segmenter, stamp)


def _stat(path: str | None):
    if not path:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


@functools.lru_cache(maxsize=20_000)
def _load_sample(path: str, mask_path: str | None, size: int, codes_text: str, tolerance: float,
                 crop_margin: float | None, segmenter, stamp):
    rgb = read_rgb(path)
    regions, strays, segmented = None, 0, False
    if mask_path:
        codes = parse_mask_codes(codes_text) if codes_text else None
        regions, strays = read_regions(mask_path, rgb.shape[:2], codes, tolerance)
    elif segmenter is not None:
        regions, segmented = segmenter(rgb), True
    image, region_map = _at_size(rgb, regions, size, crop_margin)
    return image, region_map, mask_path is not None and regions is not None, strays, segmented


def _at_size(rgb: np.ndarray, regions: np.ndarray | None, size: int, crop_margin: float | None):
    """An RGB array and its region map (None: no map) -> uint8 tensors (3,S,S) and (S,S), cropped around the cell
    first when ``crop_margin`` is given (a map with no cell: the whole image)."""
    if crop_margin is not None and regions is not None:
        box = crop_box(regions, crop_margin)
        if box is not None:
            top, left, side = box
            rgb, regions = rgb[top:top + side, left:left + side], regions[top:top + side, left:left + side]
    image = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    if regions is None:
        region_map = np.zeros((size, size), dtype=np.uint8)
    else:
        region_map = np.asarray(Image.fromarray(regions).resize((size, size), Image.NEAREST))
    return torch.from_numpy(image.copy()).permute(2, 0, 1), torch.from_numpy(region_map.copy())


def decode_sample(image: bytes, mask: bytes | None, spec: InputSpec, segmenter: Segmenter | None = None,
                  name: str = "image"):
    """A file's bytes (and its mask's, or None) -> (3,S,S) uint8 image and (S,S) region map, exactly as
    :func:`load_sample` reads the same files from disk (a served request). A masked spec needs the mask or a
    segmenter; without either it is refused with one line naming ``name``."""
    rgb = read_rgb(image, name)
    regions = None
    if mask is not None and spec.masked and spec.masks_from != "model":
        regions = read_regions(mask, rgb.shape[:2], spec.codes(), spec.mask_stray_tolerance, f"{name} mask")[0]
    elif spec.masked and spec.segmented and segmenter is not None:
        regions = segmenter(rgb)
    elif spec.masked:
        raise BloodmlError(f"{name}: the model was trained with masks={spec.mask_mode} and needs this image's mask; "
                           f"send it in the 'mask' column (the bytes of the mask file).")
    return _at_size(rgb, regions, spec.image_size, spec.crop_margin if spec.cropped else None)


def load_batch(paths, mask_paths, spec: InputSpec, segmenter: Segmenter | None = None):
    """uint8 images and region maps of the given files (``mask_paths`` entries may be None)."""
    samples = [load_sample(str(p), m if isinstance(m, str) and m else None, spec, segmenter)
               for p, m in zip(paths, mask_paths)]
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def preload(table: pd.DataFrame, classes: list[str], spec: InputSpec, progress: bool = True,
            segmenter: Segmenter | None = None) -> ImageSet:
    """Every row's image and region map at the spec's size. Files that cannot be used (unreadable, unknown mask
    codes, a mask of another shape) are all named in one error, not one per attempt."""
    images, regions, has_mask, strays, segmented, problems = [], [], [], [], [], []
    rows = table[["path", "mask_path"]].itertuples(index=False)
    for path, mask_path in tqdm(rows, total=len(table), desc="loading images", disable=not progress, leave=False):
        try:
            image, region, found, stray, drawn = load_sample(path, mask_path if isinstance(mask_path, str) else None,
                                                             spec, segmenter)
        except BloodmlError as exc:
            problems.append(str(exc))
            continue
        images.append(image)
        regions.append(region)
        has_mask.append(found)
        strays.append(stray)
        segmented.append(drawn)
    if problems:
        raise BloodmlError(files_error(problems, "images or masks cannot be used",
                                       "fix or replace them, or remove their rows"))
    index = {name: i for i, name in enumerate(classes)}
    labels = torch.tensor([index[label] for label in table["label"]], dtype=torch.long)
    return ImageSet(torch.stack(images), torch.stack(regions), torch.tensor(has_mask), labels, torch.tensor(strays),
                    torch.tensor(segmented, dtype=torch.bool))


def cell_free(regions: torch.Tensor) -> torch.Tensor:
    """(N,) whether each region map (N,S,S) marks no cell pixel."""
    return regions.flatten(1).amax(1) == 0


def cell_free_note(table: pd.DataFrame, spec: InputSpec, images: ImageSet) -> str:
    """One line on the masks (of ``table``'s images, loaded as ``images``) that mark no cell: a masked mode shows the
    network nothing of those cells. Every mask empty is refused (the wrong files, or codes read as background)."""
    if not spec.masked:
        return ""
    empty = [str(path) for path in table["mask_path"].to_numpy()[(images.has_mask & cell_free(images.regions)).numpy()]]
    if not empty:
        return ""
    total = int(images.has_mask.sum())
    if len(empty) == total:
        raise BloodmlError(f"{empty[0]}: no mask marks a cell (all {total} are background only), so masks="
                           f"{spec.mask_mode} would show the network nothing of the cells; check the mask files or "
                           f"mask_codes, or use masks=none.")
    return (f"{len(empty)} of {total} masks mark no cell, so masks={spec.mask_mode} shows the network none of "
            f"those cells: {first_few(empty)}; fix or remove them")


def stray_note(sets) -> str:
    """One line on masks whose stray pixels were filled (empty when none had any)."""
    counts = torch.cat([s.strays for s in sets if s.strays is not None])
    masks = torch.cat([s.has_mask for s in sets])
    touched = int((counts > 0).sum())
    if not touched:
        return ""
    return (f"{touched} of {int(masks.sum())} masks held stray pixel values (at most {int(counts.max())} pixels in "
            f"one); each took the region of its neighbourhood")
