"""Expert masks: which mask file belongs to an image, colour/grey codes -> region label map (0 background,
1 cytoplasm, 2 nucleus), and the mask modes.

Pure functions on numpy arrays; file access goes through :mod:`bloodml.data.images`.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import distance_transform_edt

from ..errors import BloodmlError
from .images import is_image_file, read_mask_array

BACKGROUND, CYTOPLASM, NUCLEUS = 0, 1, 2
REGION_NAMES = {"background": BACKGROUND, "cytoplasm": CYTOPLASM, "nucleus": NUCLEUS, "cell": CYTOPLASM}

# What the network sees for each mask mode: the regions kept (everything else is set to zero).
MASK_MODES = {
    "none": None,
    "cell": (CYTOPLASM, NUCLEUS),
    "nucleus": (NUCLEUS,),
    "background": (BACKGROUND,),  # control: the cell removed, only its surroundings left
    "crop": None,  # a square around the cell (its mask's bounding box plus a margin), resized: every cell at one scale
    "crop_cell": (CYTOPLASM, NUCLEUS),  # the same crop, background zeroed
}
CROP_MODES = ("crop", "crop_cell")

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
STRAY = 255  # region value of a pixel that matches no code, before it is filled from its neighbourhood
MASK_LOOKUP = "the mask folder's file with the image's sub-path (longest match), any image extension"


def find_mask(image: str | Path, masks_root: str | Path) -> Path | None:
    """The mask of ``image`` under ``masks_root``: the file whose path relative to ``masks_root`` ends with the
    longest part of the image's own path (``beta/cell0.png`` -> ``masks/beta/cell0.*`` before ``masks/cell0.*``),
    any image extension. Training (folders with ``masks_dir``) and prediction (``--masks-dir``) both use it, so an
    image gets the same mask in both. None when nothing matches; the image itself never counts."""
    image, root = Path(image), Path(masks_root)
    parts = image.with_suffix("").parts
    own = image.resolve()
    for depth in range(len(parts), 0, -1):
        tail = Path(*parts[-depth:])
        if tail.is_absolute() or ".." in tail.parts:
            continue
        folder = root / tail.parent
        if not folder.is_dir():
            continue
        found = sorted(p for p in folder.glob(f"{glob.escape(tail.name)}.*")
                       if p.is_file() and is_image_file(p) and p.resolve() != own)
        if found:
            return found[0]
    return None



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


def _match_table(values: np.ndarray, counts: np.ndarray, table: dict, tolerance: float):
    """Map each distinct value to a region via the nearest code (``STRAY`` for values near none); None when the
    stray pixels are more than ``tolerance`` of the mask (a foreign code, not a sliver of anti-aliasing)."""
    codes = np.array(list(table.keys()), dtype=np.float64).reshape(len(table), -1)
    regions = np.array(list(table.values()), dtype=np.uint8)
    vals = values.reshape(len(values), -1).astype(np.float64)
    if vals.shape[1] != codes.shape[1]:
        return None
    dist = np.abs(vals[:, None, :] - codes[None, :, :]).max(axis=2)
    nearest = dist.argmin(axis=1)
    ok = dist[np.arange(len(vals)), nearest] <= CODE_TOLERANCE
    if counts[~ok].sum() > tolerance * counts.sum() or not ok.any():
        return None
    mapped = regions[nearest]
    mapped[~ok] = STRAY
    return mapped


def fill_strays(regions: np.ndarray) -> np.ndarray:
    """Each ``STRAY`` pixel takes the region of the nearest decoded pixel (so a stray pixel inside the nucleus
    stays nucleus, not a hole of background)."""
    stray = regions == STRAY
    if not stray.any():
        return regions
    nearest = distance_transform_edt(stray, return_distances=False, return_indices=True)
    return regions[tuple(nearest)]


def decode_mask_counted(array: np.ndarray, codes: dict | None = None, source: str = "mask",
                        tolerance: float = 0.01) -> tuple[np.ndarray, int]:
    """(H, W) or (H, W, 3) code image -> ((H, W) uint8 region map, number of stray pixels filled)."""
    if array.ndim == 2:
        flat = array.reshape(-1)
        tables = (codes,) if codes else DEFAULT_GREY_TABLES
    else:
        flat = array.reshape(-1, array.shape[-1])
        tables = (codes,) if codes else DEFAULT_RGB_TABLES
    values, inverse, counts = np.unique(flat, axis=0, return_inverse=True, return_counts=True)
    fits = []
    for order, table in enumerate(tables):
        mapped = _match_table(values, counts, table, tolerance)
        if mapped is not None:
            # Prefer fewer stray pixels, then the table with the fewest unused codes (0/255 is a binary cell mask).
            strays = int(counts[mapped == STRAY].sum())
            unused = len(table) - len(np.unique(mapped[mapped != STRAY]))
            fits.append((strays, unused, order, mapped))
    if fits:
        strays, _, _, mapped = min(fits, key=lambda fit: fit[:3])
        regions = mapped[inverse.reshape(-1)].reshape(array.shape[:2])
        return fill_strays(regions), strays
    shown = ", ".join(str(tuple(v) if np.ndim(v) else int(v)) for v in values[np.argsort(-counts)][:5])
    raise BloodmlError(
        f"{source}: mask codes {shown} are not recognised; pass mask_codes, for example "
        f"'0=background,128=cytoplasm,255=nucleus' or '255/255/255=background;0/0/255=cytoplasm;0/255/255=nucleus' "
        f"(more than mask_stray_tolerance={tolerance:g} of its pixels match no code)."
    )


def decode_mask(array: np.ndarray, codes: dict | None = None, source: str = "mask",
                tolerance: float = 0.01) -> np.ndarray:
    """(H, W) or (H, W, 3) code image -> (H, W) uint8 region map (stray pixels filled from their neighbourhood)."""
    return decode_mask_counted(array, codes, source, tolerance)[0]


def resize_nearest(regions: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if regions.shape[:2] == tuple(size_hw):
        return regions
    return np.asarray(Image.fromarray(regions).resize((size_hw[1], size_hw[0]), Image.NEAREST))


def read_regions(mask_path: Path | bytes, image_hw: tuple[int, int], codes: dict | None = None,
                 tolerance: float = 0.01, name: str = "") -> tuple[np.ndarray, int]:
    """Read a mask file (or a mask file's bytes, called ``name`` in errors), decode its codes and resize it
    (nearest-neighbour) to its image's size. Returns (region map, number of stray pixels that were filled)."""
    array = read_mask_array(mask_path, name)
    label = (name or "mask") if isinstance(mask_path, (bytes, bytearray)) else str(mask_path)
    regions, strays = decode_mask_counted(array, codes, label, tolerance)
    mh, mw = regions.shape
    ih, iw = image_hw
    # Masks may come at another resolution (ALL-IDB2: 257 px masks for 103 px images) but must keep the shape.
    if abs(mh / mw - ih / iw) > 0.05 * max(ih / iw, 1.0):
        raise BloodmlError(
            f"{label}: mask is {mw}x{mh} but its image is {iw}x{ih} (different aspect ratio); "
            f"pair each image with its own mask or fix the mask file."
        )
    return resize_nearest(regions, image_hw), strays


def load_regions(mask_path: Path, image_hw: tuple[int, int], codes: dict | None = None,
                 tolerance: float = 0.01) -> np.ndarray:
    return read_regions(mask_path, image_hw, codes, tolerance)[0]


def crop_box(regions: np.ndarray, margin: float) -> tuple[int, int, int] | None:
    """(top, left, side) of the square around the cell (every non-background pixel) with ``margin`` of its larger
    side added on each side, moved inside the image (and no larger than it); None when the map has no cell."""
    rows, cols = np.nonzero(regions)
    if not len(rows):
        return None
    height, width = regions.shape
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = int(round(max(bottom - top, right - left) * (1 + 2 * margin)))
    side = max(1, min(side, height, width))
    centre_r, centre_c = (top + bottom) / 2, (left + right) / 2
    top = int(np.clip(round(centre_r - side / 2), 0, height - side))
    left = int(np.clip(round(centre_c - side / 2), 0, width - side))
    return top, left, side
