"""Image transforms: joint image+mask augmentation (batched, on any device) and the preprocessing module.

:class:`Preprocess` is an ``nn.Module`` built from an :class:`~bloodml.inputs.input_spec.InputSpec`, so the exact
preprocessing a model was trained with travels inside the logged model: colour space, stain normalisation, and
normalisation statistics (fitted on training images only, by :func:`fit_input_spec`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..compute import send
from .acquisition import Acquisition
from .input_spec import InputSpec
from .stain import fit_reference, macenko


GEOMETRY = ("rotation", "shift", "shear", "zoom", "hflip", "vflip", "brightness")  # Augmentation's own magnitudes


@dataclass(frozen=True)
class Augmentation:
    """The study's augmentation set, applied to a batch at once (on whatever device the batch is on): one random
    affine per image (rotation up to ``rotation`` degrees, shift up to ``shift`` of the size, shear up to ``shear``
    degrees, zoom 1 +/- ``zoom``, flips) sampled with ``grid_sample``, the image bilinearly and its region map by
    nearest neighbour, so the mask moves with the cell; uncovered corners are filled by reflection (a whole-image
    model never meets black corners at test time); then brightness 1 +/- ``brightness`` on the image only."""

    rotation: float = 0.0
    shift: float = 0.0
    shear: float = 0.0
    zoom: float = 0.0
    hflip: bool = False
    vflip: bool = False
    brightness: float = 0.0
    acquisition: Acquisition | None = None  # instrument changes (colour, stain, blur, resampling, JPEG)
    version: str = "affine-reflect-v2"  # part of the feature-cache key: changes when the sampling changes

    def draw(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random parameters of ``n`` images (CPU, float64, from ``generator``: the same on every device)."""
        u = lambda: torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1  # noqa: E731  U(-1, 1)
        coin = lambda on: (torch.rand(n, generator=generator, dtype=torch.float64) < 0.5) & on  # noqa: E731
        params = {"angle": u() * math.radians(self.rotation), "shear": u() * math.radians(self.shear),
                  "scale": 1 + u() * self.zoom, "tx": u() * self.shift * 2, "ty": u() * self.shift * 2,
                  "hflip": coin(self.hflip), "vflip": coin(self.vflip), "brightness": 1 + u() * self.brightness}
        if self.acquisition is not None and self.acquisition.active:  # drawn after: the geometry's draws stay
            params.update({f"acq_{k}": v for k, v in self.acquisition.draw(n, generator).items()})
        return params

    def apply(self, images: torch.Tensor, regions: torch.Tensor, params: dict[str, torch.Tensor]):
        """uint8 images (N,3,S,S) and region maps (N,S,S) -> augmented uint8 images and region maps."""
        n = len(images)
        if n == 0:
            return images, regions
        angle, shear, scale = params["angle"], params["shear"], params["scale"]
        cos, sin = torch.cos(angle), torch.sin(angle)
        # output -> input coordinates (normalised to [-1, 1]): rotation x shear / zoom, flips, shift
        a = torch.stack([torch.stack([cos, -sin + cos * torch.tan(shear)], -1),
                         torch.stack([sin, cos + sin * torch.tan(shear)], -1)], -2) / scale[:, None, None]
        flips = torch.stack([torch.where(params["hflip"], -1.0, 1.0), torch.where(params["vflip"], -1.0, 1.0)], -1)
        a = a * flips.to(a.dtype)[:, None, :]
        theta = torch.cat([a, torch.stack([params["tx"], params["ty"]], -1)[:, :, None]], dim=2)
        theta = send(theta, images.device, torch.float32)
        grid = F.affine_grid(theta, [n, 3, *images.shape[-2:]], align_corners=False)
        moved = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        moved = moved * send(params["brightness"], images.device, torch.float32)[:, None, None, None]
        if self.acquisition is not None and self.acquisition.active:
            moved = self.acquisition.apply(moved.clamp(0, 255), {k[4:]: v for k, v in params.items()
                                                                 if k.startswith("acq_")})
        moved_regions = F.grid_sample(regions[:, None].float(), grid, mode="nearest", padding_mode="reflection",
                                      align_corners=False)[:, 0]
        return moved.round_().clamp_(0, 255).to(torch.uint8), moved_regions.round_().to(torch.uint8)

    def __call__(self, images: torch.Tensor, regions: torch.Tensor, generator: torch.Generator):
        return self.apply(images, regions, self.draw(len(images), generator))


def build_augmentation(rotation: float, shift: float, shear: float, zoom: float, hflip: bool, vflip: bool,
                       brightness: float, acquisition: Acquisition | None = None) -> Augmentation | None:
    """The augmentation with these magnitudes, or None when every one is zero."""
    return effective(Augmentation(rotation, shift, shear, zoom, hflip, vflip, brightness, acquisition))


def effective(augmentation: Augmentation) -> Augmentation | None:
    """``augmentation`` without an inactive acquisition part, or None when it changes nothing."""
    acquisition = augmentation.acquisition if augmentation.acquisition is not None and \
        augmentation.acquisition.active else None
    augmentation = replace(augmentation, acquisition=acquisition)
    return augmentation if any(getattr(augmentation, name) for name in GEOMETRY + ("acquisition",)) else None


def augment(images: torch.Tensor, regions: torch.Tensor, transform: Augmentation | None,
            generator: torch.Generator | None = None):
    """Augment each (image, region map) pair jointly. uint8 in, uint8 out; draws from ``generator`` (torch's
    default generator when None)."""
    if transform is None:
        return images, regions
    return transform(images, regions, generator if generator is not None else torch.default_generator)


# lαβ colour space for Reinhard colour transfer (Reinhard et al. 2001).
_RGB2LMS = torch.tensor([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
_LMS2LAB = torch.diag(torch.tensor([3 ** -0.5, 6 ** -0.5, 2 ** -0.5])) @ torch.tensor(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]])


def _rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    lms = torch.einsum("ij,njhw->nihw", _RGB2LMS.to(x), x).clamp_min(1e-4).log10()
    return torch.einsum("ij,njhw->nihw", _LMS2LAB.to(x), lms)


def _lab_to_rgb(x: torch.Tensor) -> torch.Tensor:
    lms = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_LMS2LAB).to(x), x)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB2LMS).to(x), 10 ** lms).clamp(0, 1)


def _foreground(x: torch.Tensor) -> torch.Tensor:
    """Pixels that are not masked-out zeros (N,1,H,W); statistics ignore the blacked-out area."""
    return (x.amax(dim=1, keepdim=True) > 0).to(x)


def _masked_mean_std(x: torch.Tensor, weight: torch.Tensor):
    count = weight.sum(dim=(2, 3)).clamp_min(1.0)
    mean = (x * weight).sum(dim=(2, 3)) / count
    var = (((x - mean[..., None, None]) ** 2) * weight).sum(dim=(2, 3)) / count
    return mean, var.sqrt().clamp_min(1e-6)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    high, _ = x.max(dim=1)
    low, _ = x.min(dim=1)
    delta = high - low
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(high == r, ((g - b) / safe) % 6, torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    sat = torch.where(high > 0, delta / torch.where(high > 0, high, torch.ones_like(high)), torch.zeros_like(high))
    return torch.stack([hue, sat, high], dim=1)


class Preprocess(nn.Module):
    """float RGB in [0,1] (N,3,H,W) -> network input, as ``spec`` says. Buffers hold every fitted statistic."""

    def __init__(self, spec: InputSpec | None = None):
        super().__init__()
        spec = spec or InputSpec()
        self.color_space, self.stain_norm, self.normalize = spec.color_space, spec.stain_norm, spec.normalize
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("reference_mean", torch.tensor(spec.reference_mean, dtype=torch.float32))
        self.register_buffer("reference_std", torch.tensor(spec.reference_std, dtype=torch.float32))
        self.register_buffer("stain_matrix", torch.tensor(spec.stain_matrix, dtype=torch.float32).view(3, 2))
        self.register_buffer("stain_max", torch.tensor(spec.stain_max, dtype=torch.float32))

    def colour(self, x: torch.Tensor) -> torch.Tensor:
        """Stain normalisation then colour-space conversion (everything before the final normalisation)."""
        weight = _foreground(x)
        if self.stain_norm == "grey_world":
            mean, _ = _masked_mean_std(x, weight)
            x = (x * (mean.mean(dim=1, keepdim=True) / mean.clamp_min(1e-6))[..., None, None]).clamp(0, 1) * weight
        elif self.stain_norm == "reinhard":
            lab = _rgb_to_lab(x)
            mean, std = _masked_mean_std(lab, weight)
            lab = (lab - mean[..., None, None]) / std[..., None, None]
            lab = lab * self.reference_std.view(1, 3, 1, 1) + self.reference_mean.view(1, 3, 1, 1)
            x = _lab_to_rgb(lab) * weight
        elif self.stain_norm == "macenko":
            x = macenko(x, self.stain_matrix, self.stain_max)
        if self.color_space == "bgr":
            x = x.flip(1)
        elif self.color_space == "gray":
            grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
            x = grey.expand(-1, 3, -1, -1)
        elif self.color_space == "hsv":
            x = rgb_to_hsv(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.colour(x)
        if self.normalize == "per_image":
            mean, std = _masked_mean_std(x, torch.ones_like(x[:, :1]))
            return (x - mean[..., None, None]) / std[..., None, None]
        return (x - self.mean) / self.std


def fit_input_spec(spec: InputSpec, train_images: torch.Tensor, batch: int = 256) -> InputSpec:
    """``spec`` with every statistic its preprocessing needs fitted on ``train_images`` (float [0,1], the
    training split's network input) only: the Reinhard or Macenko reference, dataset normalisation; BGR reorders the
    backbone's statistics (Keras VGG's convention)."""
    statistics = {}
    if spec.stain_norm == "reinhard":
        stats = [_masked_mean_std(_rgb_to_lab(chunk), _foreground(chunk)) for chunk in train_images.split(batch)]
        statistics["reference_mean"] = torch.cat([m for m, _ in stats]).mean(0).tolist()
        statistics["reference_std"] = torch.cat([s for _, s in stats]).mean(0).tolist()
    if spec.stain_norm == "macenko":
        statistics["stain_matrix"], statistics["stain_max"] = fit_reference(train_images)
    if spec.color_space == "bgr":
        statistics["mean"], statistics["std"] = spec.mean[::-1], spec.std[::-1]
    spec = spec.fitted(**statistics)
    if spec.normalize == "dataset":
        probe = Preprocess(spec)
        with torch.no_grad():
            total, total_sq, count = torch.zeros(3), torch.zeros(3), 0
            for chunk in train_images.split(batch):
                x = probe.colour(chunk).double()
                total += x.sum(dim=(0, 2, 3)).float()
                total_sq += (x ** 2).sum(dim=(0, 2, 3)).float()
                count += x.shape[0] * x.shape[2] * x.shape[3]
            spec = spec.fitted(mean=(total / count).tolist(),
                               std=(total_sq / count - (total / count) ** 2).clamp_min(1e-8).sqrt().tolist())
    return spec
