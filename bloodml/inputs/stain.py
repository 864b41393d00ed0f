"""Macenko stain normalisation (Macenko et al., ISBI 2009), batched and fixed-shape so it runs inside the model
(and its exported graph) on any device. Same steps and constants as torchstain's reference implementation
(a port of the original): optical density, the plane of the two largest eigenvectors, the extreme angles as the
two stain vectors, concentrations rescaled to a reference's 99th percentiles."""

from __future__ import annotations

import torch

LIGHT = 240.0  # transmitted light intensity (Io)
ALPHA = 1.0  # percentile of the extreme angles
BETA = 0.15  # optical density below which a pixel counts as transparent
MIN_PIXELS = 16  # fewer stained pixels than this: the image is left as it is
# torchstain's published H&E reference (hematoxylin, eosin columns) and maximal concentrations
REFERENCE_MATRIX = (0.5626, 0.2159, 0.7201, 0.8012, 0.4062, 0.5581)
REFERENCE_MAX = (1.9705, 1.0308)


def stain_vectors(x: torch.Tensor, foreground: torch.Tensor):
    """Per image of ``x`` (N,3,H,W) in [0,1] with ``foreground`` (N,1,H,W): its stain matrix (N,3,2), the 99th
    percentile of each stain's concentration (N,2), the concentrations (N,2,H*W), and whether enough pixels were
    stained to estimate them (N,)."""
    od = -torch.log((x * 255 + 1) / LIGHT).flatten(2)
    inside = foreground.flatten(2)[:, 0] > 0
    stained = (od >= BETA).all(1) & inside
    weight = stained.to(od.dtype)
    count = weight.sum(1)
    mean = (od * weight[:, None]).sum(2) / count.clamp_min(1)[:, None]
    centred = (od - mean[..., None]) * weight[:, None]
    covariance = centred @ centred.transpose(1, 2) / (count - 1).clamp_min(1)[:, None, None]
    covariance = covariance + 1e-6 * torch.eye(3, dtype=od.dtype, device=od.device)
    plane = torch.linalg.eigh(covariance)[1][:, :, 1:3]  # the two largest eigenvectors
    plane = plane * torch.where(plane.sum(1, keepdim=True) < 0, -1.0, 1.0)  # pointing into positive density
    projected = plane.transpose(1, 2) @ od
    angle = torch.atan2(projected[:, 1], projected[:, 0])
    angle = torch.where(stained, angle, torch.full_like(angle, float("nan")))
    # no stained pixel: NaN angles, replaced by 0 and 1 so the arithmetic stays finite (the image is left alone)
    low = torch.nanquantile(angle, ALPHA / 100, dim=1).nan_to_num(0.0)
    high = torch.nanquantile(angle, 1 - ALPHA / 100, dim=1).nan_to_num(1.0)
    v_low = (plane @ torch.stack([low.cos(), low.sin()], 1)[..., None])[..., 0]
    v_high = (plane @ torch.stack([high.cos(), high.sin()], 1)[..., None])[..., 0]
    first = (v_low[:, 0] > v_high[:, 0])[:, None]  # hematoxylin first, as torchstain orders them
    matrix = torch.stack([torch.where(first, v_low, v_high), torch.where(first, v_high, v_low)], 2)
    concentration = torch.linalg.pinv(matrix) @ od
    kept = torch.where(inside[:, None], concentration, torch.full_like(concentration, float("nan")))
    maximum = torch.nanquantile(kept, 0.99, dim=2)
    return matrix, maximum, concentration, count >= MIN_PIXELS


def macenko(x: torch.Tensor, reference_matrix: torch.Tensor, reference_max: torch.Tensor) -> torch.Tensor:
    """``x`` (N,3,H,W) in [0,1] re-stained with the reference stain matrix (3,2) and maximal concentrations (2,).
    Masked-out zeros stay zero; an image with too few stained pixels is returned unchanged."""
    foreground = (x.amax(1, keepdim=True) > 0).to(x.dtype)
    matrix, maximum, concentration, enough = stain_vectors(x, foreground)
    scale = (reference_max[None] / maximum.nan_to_num(1.0).clamp_min(1e-6))[..., None]
    restained = (LIGHT * torch.exp(-reference_matrix[None] @ (concentration * scale))).clamp(max=255) / 255
    restained = restained.view_as(x) * foreground
    return torch.where(enough[:, None, None, None], restained, x)


def fit_reference(images: torch.Tensor, batch: int = 64) -> tuple[list[float], list[float]]:
    """The training images' own reference: the mean of their stain vectors (each unit length) and of their
    maximal concentrations, over the images with enough stained pixels. Returns (matrix as 6 values, maxima)."""
    matrices, maxima = [], []
    for chunk in images.split(batch):
        matrix, maximum, _, enough = stain_vectors(chunk, (chunk.amax(1, keepdim=True) > 0).to(chunk.dtype))
        matrices.append(matrix[enough])
        maxima.append(maximum[enough])
    matrices, maxima = torch.cat(matrices), torch.cat(maxima)
    if not len(matrices):
        return list(REFERENCE_MATRIX), list(REFERENCE_MAX)
    matrix = matrices.mean(0)
    matrix = matrix / matrix.norm(dim=0, keepdim=True)
    return matrix.flatten().tolist(), maxima.mean(0).tolist()
