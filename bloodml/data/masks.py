"""Expert masks: colour/grey codes -> region label map (0 background, 1 cytoplasm, 2 nucleus); mask modes.

Pure functions on numpy arrays; the only file access goes through :mod:`bloodml.data.images`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BloodmlError
from .images import read_mask_array

BACKGROUND, CYTOPLASM, NUCLEUS = 0, 1, 2
REGION_NAMES = {"background": BACKGROUND, "cytoplasm": CYTOPLASM, "nucleus": NUCLEUS, "cell": CYTOPLASM}

# What the network sees for each mask mode: the regions kept (everything else is set to zero).
MASK_MODES = {
    "none": None,
    "cell": (CYTOPLASM, NUCLEUS),
    "nucleus": (NUCLEUS,),
    "background": (BACKGROUND,),  # control: the cell removed, only its surroundings left
}

# Code tables tried in order when the user gives none. Each maps a grey level or RGB colour to a region.
DEFAULT_GREY_TABLES = (
    {0: BACKGROUND, 128: CYTOPLASM, 255: NUCLEUS},  # wbc-zheng2018 style
    {0: BACKGROUND, 1: CYTOPLASM, 2: NUCLEUS},  # label maps
    {0: BACKGROUND, 255: CYTOPLASM},  # binary cell masks
    {0: BACKGROUND, 1: CYTOPLASM},
)
DEFAULT_RGB_TABLES = (
    {(255, 255, 255): BACKGROUND, (0, 0, 255): CYTOPLASM, (0, 255, 255): NUCLEUS},  # ALL-IDB2 (Loddo & Putzu)
    {(0, 0, 0): BACKGROUND, (0, 255, 0): CYTOPLASM, (255, 0, 0): NUCLEUS},
)
# Lossy formats blur codes; a pixel within this distance of exactly one code takes that code.
CODE_TOLERANCE = 24


def parse_mask_codes(text: str) -> dict:
    """Parse ``"0=background,128=cytoplasm,255=nucleus"`` or ``"255/255/255=background;0/255/255=nucleus"``."""
    table: dict = {}
    items = text.split(";") if "/" in text else re.split(r"[;,]", text)  # RGB entries are separated by ';'
    for item in items:
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise BloodmlError(f"mask_codes entry '{item}' has no '='; write it like '0=background,255=nucleus'.")
        code, region = (s.strip() for s in item.split("=", 1))
        if region.lower() not in REGION_NAMES:
            raise BloodmlError(
                f"mask_codes region '{region}' is unknown; use one of {', '.join(sorted(REGION_NAMES))}."
            )
        try:
            key = tuple(int(v) for v in code.split("/")) if "/" in code else int(code)
        except ValueError:
            raise BloodmlError(f"mask_codes code '{code}' is not a number (grey) or R/G/B triple; fix it.")
        table[key] = REGION_NAMES[region.lower()]
    if not table:
        raise BloodmlError("mask_codes is empty; write it like '0=background,128=cytoplasm,255=nucleus'.")
    return table


def _match_table(values: np.ndarray, counts: np.ndarray, table: dict):
    """Map each distinct value to a region via the nearest code; None if some pixels match no code."""
    codes = np.array(list(table.keys()), dtype=np.float64).reshape(len(table), -1)
    regions = np.array(list(table.values()), dtype=np.uint8)
    vals = values.reshape(len(values), -1).astype(np.float64)
    if vals.shape[1] != codes.shape[1]:
        return None
    dist = np.abs(vals[:, None, :] - codes[None, :, :]).max(axis=2)
    nearest = dist.argmin(axis=1)
    ok = dist[np.arange(len(vals)), nearest] <= CODE_TOLERANCE
    # Tolerate a sliver of stray pixels (anti-aliasing) but not a foreign code.
    if counts[~ok].sum() > 0.005 * counts.sum():
        return None
    mapped = regions[nearest]
    mapped[~ok] = BACKGROUND
    return mapped


def decode_mask(array: np.ndarray, codes: dict | None = None, source: str = "mask") -> np.ndarray:
    """(H, W) or (H, W, 3) code image -> (H, W) uint8 region map."""
    if array.ndim == 2:
        flat = array.reshape(-1)
        tables = (codes,) if codes else DEFAULT_GREY_TABLES
    else:
        flat = array.reshape(-1, array.shape[-1])
        tables = (codes,) if codes else DEFAULT_RGB_TABLES
    values, inverse, counts = np.unique(flat, axis=0, return_inverse=True, return_counts=True)
    fits = []
    for order, table in enumerate(tables):
        mapped = _match_table(values, counts, table)
        if mapped is not None:
            # Prefer the table that explains the mask with the fewest unused codes (0/255 is a binary cell mask).
            unused = len(table) - len(np.unique(mapped))
            fits.append((unused, order, mapped))
    if fits:
        mapped = min(fits, key=lambda fit: fit[:2])[2]
        return mapped[inverse.reshape(-1)].reshape(array.shape[:2])
    shown = ", ".join(str(tuple(v) if np.ndim(v) else int(v)) for v in values[np.argsort(-counts)][:5])
    raise BloodmlError(
        f"{source}: mask codes {shown} are not recognised; pass mask_codes, for example "
        f"'0=background,128=cytoplasm,255=nucleus' or '255/255/255=background;0/0/255=cytoplasm;0/255/255=nucleus'."
    )


def resize_nearest(regions: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if regions.shape[:2] == tuple(size_hw):
        return regions
    return np.asarray(Image.fromarray(regions).resize((size_hw[1], size_hw[0]), Image.NEAREST))


def load_regions(mask_path: Path, image_hw: tuple[int, int], codes: dict | None = None) -> np.ndarray:
    """Read a mask file, decode its codes and resize it (nearest-neighbour) to its image's size."""
    array = read_mask_array(mask_path)
    regions = decode_mask(array, codes, source=str(mask_path))
    mh, mw = regions.shape
    ih, iw = image_hw
    # Masks may come at another resolution (ALL-IDB2: 257 px masks for 103 px images) but must keep the shape.
    if abs(mh / mw - ih / iw) > 0.05 * max(ih / iw, 1.0):
        raise BloodmlError(
            f"{mask_path}: mask is {mw}x{mh} but its image is {iw}x{ih} (different aspect ratio); "
            f"pair each image with its own mask or fix the mask file."
        )
    return resize_nearest(regions, image_hw)
