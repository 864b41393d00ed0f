"""A segmenter's region map tidied to what a single-cell crop holds: one cell. A neighbouring cell cut by the
image border is dropped (also where a thin bridge joins it to the cell), as are specks of debris; the cell's other
parts stay (the lobes of a nucleus may be apart when the cytoplasm is faint), and holes inside it become
cytoplasm."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CYTOPLASM, NUCLEUS = 1, 2
BRIDGE = 0.03  # bridges thinner than about twice this share of the image side are cut
SPECK = 0.02  # parts smaller than this share of the main part are debris


def _parts(mask: np.ndarray, nucleus: np.ndarray):
    """Connected parts of ``mask``: (labels, the main part's label, sizes, touches-border flags). The main part
    holds the most nucleus (a white cell is its nucleus); the largest on a tie."""
    labels, count = ndimage.label(mask)
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(mask, labels, index=index)
    nuclei = ndimage.sum_labels(nucleus, labels, index=index)
    edge = np.zeros_like(mask)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    border = ndimage.sum_labels(edge, labels, index=index) > 0
    return labels, index[np.lexsort((sizes, nuclei))[-1]], dict(zip(index, sizes)), dict(zip(index, border))


def one_cell(regions: np.ndarray) -> np.ndarray:
    """A region map (H,W) uint8 (0 background, 1 cytoplasm, 2 nucleus) -> the same map without the parts that are
    not the cell: other parts touching the border (after cutting thin bridges with a morphological opening) and
    specks; holes inside what is kept are filled with cytoplasm. An empty map stays empty."""
    cell = regions > 0
    if not cell.any():
        return regions
    nucleus = regions == NUCLEUS
    radius = max(1, round(BRIDGE * min(regions.shape)))
    disk = np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius
    core = ndimage.binary_opening(cell, structure=disk)
    if core.any():  # neighbours joined by a bridge: cut away with their rim
        labels, main, _, border = _parts(core, nucleus)
        intruders = np.isin(labels, [k for k, touches in border.items() if touches and k != main])
        if intruders.any():
            cell = cell & ~ndimage.binary_dilation(intruders, structure=disk, iterations=2)
    labels, main, sizes, border = _parts(cell, nucleus)
    keep = [k for k in sizes if k == main or (not border[k] and sizes[k] >= SPECK * sizes[main])]
    cell = np.isin(labels, keep)
    filled = ndimage.binary_fill_holes(cell)
    tidy = np.where(cell, regions, 0).astype(regions.dtype)
    tidy[filled & ~cell] = CYTOPLASM
    return tidy
