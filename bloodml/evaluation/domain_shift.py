"""Domain-shift check: are new images like the training images?

Each image is summarised by what an instrument change moves (colour: per-channel mean and spread; saturation;
contrast; sharpness: Laplacian energy and gradient magnitude), over the pixels the network sees (a masked
model: the cell). The training images fix a Gaussian profile of these descriptors and the 99th percentile of
their own Mahalanobis distances; new images beyond it are 'far'. Pure torch/numpy; the profile travels in the
model's metadata.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

NAMES = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation", "log_laplacian", "log_gradient")
WARN_SHARE = 0.5  # warn when more than this share of the images is far
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def input_descriptors(spec, images: torch.Tensor, regions: torch.Tensor, batch: int = 256) -> np.ndarray:
    """:func:`descriptors` of preloaded images as the network sees them (``spec``: their InputSpec), a batch at a
    time: a pool of thousands of images never becomes float input all at once."""
    parts = [descriptors(spec.network_input(images[i:i + batch], regions[i:i + batch]))
             for i in range(0, len(images), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 9), dtype=np.float32)


def descriptors(x: torch.Tensor) -> np.ndarray:
    """Network input (N,3,S,S) float in [0,1], masked or not -> (N, 9) descriptors over the visible pixels."""
    x = x.detach().float().cpu()
    seen = (x.amax(1, keepdim=True) > 0).float()
    count = seen.sum((2, 3)).clamp_min(1.0)
    mean = (x * seen).sum((2, 3)) / count
    std = (((x - mean[..., None, None]) ** 2 * seen).sum((2, 3)) / count).sqrt()
    saturation = ((x.amax(1, keepdim=True) - x.amin(1, keepdim=True)) * seen).sum((2, 3)) / count
    grey = x.mean(1, keepdim=True)
    inner = -F.max_pool2d(-seen, 3, 1, 1)  # pixels whose neighbours are all visible: no mask edge
    inner_count = inner.sum((2, 3)).clamp_min(1.0)
    laplacian = F.conv2d(grey, _LAPLACE.view(1, 1, 3, 3), padding=1)
    energy = (laplacian ** 2 * inner).sum((2, 3)) / inner_count
    gx, gy = grey[..., :, 1:] - grey[..., :, :-1], grey[..., 1:, :] - grey[..., :-1, :]
    gradient = ((gx[..., :-1, :] ** 2 + gy[..., :, :-1] ** 2).sqrt() * inner[..., :-1, :-1]).sum((2, 3)) / inner_count
    return torch.cat([mean, std, saturation, torch.log(energy + 1e-8), torch.log(gradient + 1e-6)], 1).numpy()


@dataclass(frozen=True)
class ShiftProfile:
    mean: list[float]
    inverse_covariance: list[list[float]]
    threshold: float  # 99th percentile of the training images' own distances

    @classmethod
    def fit(cls, train: np.ndarray) -> "ShiftProfile":
        mean = train.mean(0)
        covariance = np.cov(train, rowvar=False) if len(train) > 1 else np.eye(train.shape[1])
        covariance = covariance + np.eye(len(mean)) * (1e-3 * np.trace(covariance) / len(mean) + 1e-9)
        inverse = np.linalg.inv(covariance)
        profile = cls(mean.tolist(), inverse.tolist(), 1.0)
        return cls(profile.mean, profile.inverse_covariance, float(np.percentile(profile.distances(train), 99)))

    def distances(self, points: np.ndarray) -> np.ndarray:
        centred = points - np.asarray(self.mean)
        return np.sqrt(np.einsum("ni,ij,nj->n", centred, np.asarray(self.inverse_covariance), centred))

    def report(self, points: np.ndarray) -> dict[str, float]:
        """Share of images beyond the training threshold, and the median distance in threshold units."""
        if not len(points):
            return {}
        d = self.distances(points) / self.threshold
        return {"shift_far_share": float((d > 1).mean()), "shift_median_distance": float(np.median(d))}

    def to_dict(self) -> dict:
        return {**asdict(self), "descriptors": list(NAMES)}

    @classmethod
    def from_dict(cls, values: dict | None) -> "ShiftProfile | None":
        if not values:
            return None
        return cls(list(values["mean"]), [list(r) for r in values["inverse_covariance"]], float(values["threshold"]))


def warning(report: dict[str, float], n: int) -> str:
    """One line when most images are far from the training images (empty otherwise)."""
    share = report.get("shift_far_share", 0.0)
    if share <= WARN_SHARE:
        return ""
    return (f"warning: {share:.0%} of these {n} images lie beyond the 99th percentile of the training images' "
            f"colour, contrast and sharpness (median distance {report['shift_median_distance']:.1f}x): they are "
            f"unlike what the model learnt from (another instrument, stain or camera?); expect lower accuracy. The way "
            f"out: label 20 or so of them (bloodml suggest picks which) and adapt the model to them (bloodml adapt); "
            f"docs/guides/new-instrument.md.")
