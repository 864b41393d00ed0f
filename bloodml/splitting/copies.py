"""Near-copy detection: a cheap hash finds candidate pairs, a pixel-level second look confirms each one.

Small, round, centred cells on a pale background look alike to a 64-bit perceptual hash: two different
neutrophils can be as close as a re-encoded copy. So the hash only proposes; a pair counts as a copy when, after
the two images are registered onto each other (flip/rotation, then scale and shift per axis), their fine structure
(granules, nucleus lobes, the debris and red-cell edges around the cell) correlates like one image's.

- :func:`fingerprint`: the hash of an image in every flip/rotation and a few crops (re-cropped copies), as uint64.
- :func:`candidate_pairs`: pairs whose hashes are within a Hamming distance, in row chunks (memory grows with n).
- :func:`hinted_similarity` / :func:`copy_similarity`: the second look, 1.0 for the same pixels; distinct cells score far lower.

Pure numpy/scipy on RGB arrays; no files, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.fft import dctn
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.optimize import minimize

HASH_GRID, HASH_SIDE = 32, 8  # DCT of a 32x32 grey image, its 8x8 lowest frequencies: 64 bits
# Crops under which a re-cropped copy must still hash close: one side cut by 5/10/15 %, or all sides (zoom).
SIDE_CUTS = (0.05, 0.10, 0.15)
ZOOM_CUTS = (0.05, 0.10)
CANVAS = 96  # registration and comparison grid (pixels)
COARSE_BAND = (1.0, 8.0)  # difference-of-Gaussians used to register (cell outline, nucleus)
MEDIUM_BAND = (1.0, 3.0)  # ... to refine the registration
FINE_BAND = (0.7, 2.0)
# A candidate whose outline does not match at the hashed crop (coarse correlation) is not worth registering.
QUICK_BAR = 0.8
# Fine-structure correlation from which two images count as the same cell. Measured on wbc-zheng2018: the 9
# copy pairs found score 0.83-1.0, the most similar distinct cells among 1,068 hash candidates 0.68.
COPY_SIMILARITY = 0.76
# Below this many pixels a side, an image is upsampled onto the canvas and has little fine structure left to
# compare (two different 24-pixel cells can correlate at 0.9): such pairs need a near-identical second look.
SMALL_SIDE, SMALL_SIMILARITY = 64, 0.95  # ... and to compare once registered (granules, texture, background detail)


# --- hashes -------------------------------------------------------------------------------------------------
_SIGN = np.where(np.arange(HASH_SIDE) % 2, -1.0, 1.0)


def _grey(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(rgb, dtype=np.uint8)).convert("L")


def _crop_boxes(width: int, height: int) -> list[tuple[float, float, float, float]]:
    boxes = [(0.0, 0.0, float(width), float(height))]
    for cut in SIDE_CUTS:
        dx, dy = width * cut, height * cut
        boxes += [(dx, 0, width, height), (0, 0, width - dx, height), (0, dy, width, height), (0, 0, width, height - dy)]
    for cut in ZOOM_CUTS:
        dx, dy = width * cut, height * cut
        boxes.append((dx, dy, width - dx, height - dy))
    return boxes


def _bits(coefficients: np.ndarray) -> int:
    above = (coefficients > np.median(coefficients)).reshape(-1)
    return int(np.packbits(above).view(">u8")[0])


def _dihedral_hashes(low: np.ndarray) -> list[int]:
    """The hash of the image under each of the 8 flips/rotations, from one DCT: a flip negates the odd
    frequencies along its axis, a transpose swaps the axes (the first entry is the image as it is)."""
    out = []
    for transposed in (False, True):
        coefficients = low.T if transposed else low
        for flip_rows in (False, True):
            for flip_columns in (False, True):
                signed = coefficients * (_SIGN[:, None] if flip_rows else 1.0) * (_SIGN[None, :] if flip_columns else 1.0)
                out.append(_bits(signed))
    return out


def fingerprint(rgb: np.ndarray) -> np.ndarray:
    """uint64 hashes of the image under 8 flips/rotations x (whole image + crops); entry 0 is the plain hash."""
    grey = _grey(rgb)
    hashes = []
    for box in _crop_boxes(*grey.size):
        pixels = np.asarray(grey.resize((HASH_GRID, HASH_GRID), Image.LANCZOS, box=box), dtype=np.float64)
        hashes += _dihedral_hashes(dctn(pixels, type=2)[:HASH_SIDE, :HASH_SIDE])
    return np.array(hashes, dtype=np.uint64)


def hash_hex(value: int | np.uint64) -> str:
    return f"{int(value):016x}"


# Multi-index hashing: the 64 bits as 4 blocks of 16; two hashes within d bits agree within d // 4 bits on at
# least one block (pigeonhole), so only entries in the buckets near a query's blocks need a full comparison.
BLOCKS, BLOCK_BITS = 4, 16
MAX_INDEXED_DISTANCE = 11  # up to 2 bits per block (137 probes); beyond it, the exhaustive comparison
CANDIDATE_BATCH = 4_000_000  # full comparisons per step (memory: a few arrays of this length)


def _flip_masks(bits: int, radius: int) -> np.ndarray:
    """Every ``bits``-bit value with at most ``radius`` bits set."""
    from itertools import combinations
    masks = [0] + [sum(1 << b for b in chosen) for r in range(1, radius + 1) for chosen in combinations(range(bits), r)]
    return np.array(masks, dtype=np.uint64)


def candidate_pairs(fingerprints: np.ndarray, max_distance: int, batch: int = CANDIDATE_BATCH) -> np.ndarray:
    """Rows (i, j, distance, variant, swapped), i < j, for every pair where one image's plain hash lies within
    ``max_distance`` bits of a variant of the other's: ``variant`` (crop * 8 + orientation, as in
    :func:`fingerprint`) of image j matches image i when ``swapped`` is 0; of image i matching image j when 1.
    Of several matching variants the closest is given (then unswapped, then the lowest variant).

    ``fingerprints`` is (n, K) uint64. A multi-index over the n*K variant hashes finds them without comparing
    every pair (20,000 images of K = 120: seconds, where the n^2 K comparison takes minutes); memory is the
    index (linear in n) plus ``batch`` full comparisons at a time."""
    n = len(fingerprints)
    if n < 2 or max_distance < 0:
        return np.zeros((0, 5), dtype=np.int64)
    if max_distance > MAX_INDEXED_DISTANCE:
        return candidate_pairs_exhaustive(fingerprints, max_distance)
    fingerprints = np.ascontiguousarray(fingerprints, dtype=np.uint64)
    variants = fingerprints.shape[1]
    plain, entries = fingerprints[:, 0], fingerprints.reshape(-1)
    masks = _flip_masks(BLOCK_BITS, max_distance // BLOCKS)
    block_mask = np.uint64((1 << BLOCK_BITS) - 1)
    found = []
    for block in range(BLOCKS):
        shift = np.uint64(block * BLOCK_BITS)
        keys = (entries >> shift) & block_mask
        order = np.argsort(keys, kind="stable")
        bounds = np.searchsorted(keys[order], np.arange((1 << BLOCK_BITS) + 1, dtype=np.uint64))
        probes = (((plain >> shift) & block_mask)[:, None] ^ masks[None, :]).astype(np.int64)  # (n, probes)
        counts = bounds[probes + 1] - bounds[probes]
        per_query = counts.sum(1)
        start = 0
        while start < n:  # queries in batches of about ``batch`` full comparisons
            stop = start + max(1, int(np.searchsorted(np.cumsum(per_query[start:]), batch)))
            stop = min(stop, n)
            c = counts[start:stop].reshape(-1)
            total = int(c.sum())
            if total:
                first = np.repeat(bounds[probes[start:stop].reshape(-1)], c)
                offset = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
                entry = order[first + offset]
                query = np.repeat(np.repeat(np.arange(start, stop), len(masks)), c)
                distance = np.bitwise_count(plain[query] ^ entries[entry])
                other = entry // variants
                keep = (distance <= max_distance) & (other != query)
                found.append(np.stack([query[keep], other[keep], distance[keep].astype(np.int64),
                                       (entry % variants)[keep]], axis=1))
            start = stop
    if not found:
        return np.zeros((0, 5), dtype=np.int64)
    x, y, distance, variant = np.concatenate(found).T  # x's plain hash matches variant of y
    i, j, swapped = np.minimum(x, y), np.maximum(x, y), (x > y).astype(np.int64)
    best = np.lexsort((variant, swapped, distance, j, i))
    i, j, distance, variant, swapped = (a[best] for a in (i, j, distance, variant, swapped))
    first = np.ones(len(i), dtype=bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return np.stack([i, j, distance, variant, swapped], axis=1)[first].astype(np.int64)


def candidate_pairs_exhaustive(fingerprints: np.ndarray, max_distance: int, chunk: int = 256) -> np.ndarray:
    """:func:`candidate_pairs` by comparing every pair: ``chunk`` rows with every image, one variant at a time, so
    memory stays linear in n; time is n^2 K bit counts (the reference, and for distances the index cannot take)."""
    n = len(fingerprints)
    if n < 2 or max_distance < 0:
        return np.zeros((0, 5), dtype=np.int64)
    plain = fingerprints[:, 0]
    found = []
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        size = rows.stop - start
        # plain hash of each row vs every variant of every image (forward), every variant of each row vs every
        # plain hash (backward): the best distance of each pair and the variant that gave it
        f_best = np.full((size, n), 255, dtype=np.uint8)
        b_best = np.full((size, n), 255, dtype=np.uint8)
        f_arg = np.zeros((size, n), dtype=np.int16)
        b_arg = np.zeros((size, n), dtype=np.int16)
        for variant in range(fingerprints.shape[1]):
            forward = np.bitwise_count(plain[rows, None] ^ fingerprints[None, :, variant])
            better = forward < f_best
            f_best[better], f_arg[better] = forward[better], variant
            backward = np.bitwise_count(fingerprints[rows, variant, None] ^ plain[None, :])
            better = backward < b_best
            b_best[better], b_arg[better] = backward[better], variant
        distance = np.minimum(f_best, b_best)
        i, j = np.nonzero(distance <= max_distance)
        keep = i + start < j
        i, j = i[keep], j[keep]
        swapped = b_best[i, j] < f_best[i, j]
        variant = np.where(swapped, b_arg[i, j], f_arg[i, j])
        found.append(np.stack([i + start, j, distance[i, j], variant, swapped], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 5), dtype=np.int64)


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """One of the 8 flips/rotations of an (H, W[, C]) array, numbered as :func:`fingerprint` numbers its hashes:
    bit 2 transposes, then bit 1 flips rows (upside down), bit 0 flips columns (mirror)."""
    out = np.swapaxes(image, 0, 1) if orientation & 4 else image
    if orientation & 2:
        out = out[::-1]
    if orientation & 1:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def inverse_orientation(orientation: int) -> int:
    """The orientation that undoes ``orientation`` (a transpose swaps which axis each flip acts on)."""
    if not orientation & 4:
        return orientation
    return 4 | ((orientation & 1) << 1) | ((orientation & 2) >> 1)


# --- the second look ----------------------------------------------------------------------------------------
_YY, _XX = np.mgrid[:CANVAS, :CANVAS].astype(np.float64)


def _band(grey: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    return gaussian_filter(grey, band[0]) - gaussian_filter(grey, band[1])


@dataclass(frozen=True)
class Canvas:
    """An image as the second look sees it: grey on a CANVAS x CANVAS grid, its coarse band, and its size in
    pixels (height, width). Turning a square canvas is turning the image, so this is computed once per image."""

    grey: np.ndarray
    coarse: np.ndarray
    size: tuple[int, int]

    @classmethod
    def of(cls, rgb: np.ndarray) -> "Canvas":
        grey = np.asarray(_grey(rgb).resize((CANVAS, CANVAS), Image.BILINEAR), dtype=np.float64)
        return cls(grey, _band(grey, COARSE_BAND), tuple(np.shape(rgb)[:2]))

    def turned(self, orientation: int) -> "Canvas":
        size = self.size[::-1] if orientation & 4 else self.size
        return Canvas(orient(self.grey, orientation), orient(self.coarse, orientation), size)


def _correlation(a: np.ndarray, b: np.ndarray, warp, step: int = 1) -> float:
    """Correlation of ``b`` with ``a`` sampled at ``warp`` = (scale_y, scale_x, shift_y, shift_x), over the part of
    ``b`` that falls inside ``a`` (at least 60 % of it); ``step`` > 1 looks at every step-th pixel only."""
    sy, sx, ty, tx = warp
    ys, xs = sy * _YY[::step, ::step] + ty, sx * _XX[::step, ::step] + tx
    inside = (ys >= 0) & (ys <= CANVAS - 1) & (xs >= 0) & (xs <= CANVAS - 1)
    if inside.mean() < 0.6:
        return -1.0
    x = map_coordinates(a, [ys, xs], order=1)[inside]
    y = b[::step, ::step][inside]
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum() + 1e-12))


def _starts(size_a: tuple[int, int], size_b: tuple[int, int], crops: bool = True) -> list[tuple[float, ...]]:
    """Where registration starts: identity, ``b`` as a same-scale crop of ``a`` at each corner, edge and the centre
    (sizes are (height, width) of the original images), and with ``crops`` the zooms and side cuts."""
    starts = [(1.0, 1.0, 0.0, 0.0)]
    sy, sx = size_b[0] / size_a[0], size_b[1] / size_a[1]
    if sy <= 1 and sx <= 1:
        for fy in (0.0, 0.5, 1.0):
            for fx in (0.0, 0.5, 1.0):
                starts.append((sy, sx, fy * (1 - sy) * CANVAS, fx * (1 - sx) * CANVAS))
    if not crops:
        return starts
    for cut in ZOOM_CUTS + (0.15,):
        starts.append((1 - 2 * cut, 1 - 2 * cut, cut * CANVAS, cut * CANVAS))
    for cut in SIDE_CUTS:
        for side in (0.0, 1.0):
            starts += [(1.0, 1 - cut, 0.0, cut * CANVAS * side), (1 - cut, 1.0, cut * CANVAS * side, 0.0)]
    return starts


def _box_warp(box, height: int, width: int) -> tuple[float, float, float, float]:
    """The warp that samples the crop ``box`` (x0, y0, x1, y1 in pixels) of an image from its full canvas."""
    x0, y0, x1, y1 = box
    return ((y1 - y0) / height, (x1 - x0) / width, y0 * CANVAS / height, x0 * CANVAS / width)


def _refine(a: np.ndarray, b: np.ndarray, start, score: float) -> tuple[float, np.ndarray]:
    result = minimize(lambda w: -_correlation(a, b, w), np.array(start, dtype=np.float64), method="Nelder-Mead",
                      options={"xatol": 0.02, "fatol": 1e-4, "maxiter": 200})
    return (-result.fun, result.x) if -result.fun > score else (score, np.array(start, dtype=np.float64))


def _compare(whole: Canvas, part: Canvas, starts, quick_bar: float | None) -> tuple[float, float]:
    """(coarse, fine) correlation of ``part`` registered into ``whole`` from the best of ``starts``. With
    ``quick_bar``, a pair whose outline matches under it at every start (on a half grid) is not registered."""
    if quick_bar is not None:
        quick = max(_correlation(whole.coarse, part.coarse, w, step=2) for w in starts)
        if quick < quick_bar:
            return quick, -1.0
    best, start = max(((_correlation(whole.coarse, part.coarse, w), w) for w in starts), key=lambda s: s[0])
    score, warp = _refine(whole.coarse, part.coarse, start, best)
    medium_w, medium_p = _band(whole.grey, MEDIUM_BAND), _band(part.grey, MEDIUM_BAND)
    _, warp = _refine(medium_w, medium_p, warp, _correlation(medium_w, medium_p, warp))
    return score, _correlation(_band(whole.grey, FINE_BAND), _band(part.grey, FINE_BAND), warp)


def hinted_similarity(canvas_i: Canvas, canvas_j: Canvas, variant: int, swapped: int,
                      quick_bar: float | None = QUICK_BAR) -> float:
    """:func:`copy_similarity` guided by a :func:`candidate_pairs` row: its hash variant says which image is the
    (turned) crop of which, so one orientation and one direction are registered."""
    whole, part = (canvas_j, canvas_i) if not swapped else (canvas_i, canvas_j)
    crop, orientation = divmod(int(variant), 8)
    part = part.turned(inverse_orientation(orientation))  # back into the whole image's frame
    height, width = whole.size
    starts = [_box_warp(_crop_boxes(width, height)[crop], height, width)] + _starts(whole.size, part.size, False)
    return _compare(whole, part, starts, quick_bar)[1]


def copy_similarity(rgb_a: np.ndarray, rgb_b: np.ndarray) -> float:
    """Fine-structure correlation of two images after registering them, trying every flip/rotation and both
    directions (either may be a crop, zoom or resize of the other). About 1 for the same image re-encoded,
    resized, re-cropped or brightened; well under :data:`COPY_SIMILARITY` for two distinct cells."""
    a, b = Canvas.of(rgb_a), Canvas.of(rgb_b)
    best = (-2.0, -1.0)
    for orientation in range(8):
        turned = b.turned(orientation)
        for whole, part in ((a, turned), (turned, a)):
            best = max(best, _compare(whole, part, _starts(whole.size, part.size), None))
    return best[1]


def similarity_bar(threshold: float, a: Canvas, b: Canvas) -> float:
    """The similarity a pair must reach: ``threshold``, or ``SMALL_SIMILARITY`` for small images."""
    return max(threshold, SMALL_SIMILARITY) if min(a.size + b.size) < SMALL_SIDE else threshold
