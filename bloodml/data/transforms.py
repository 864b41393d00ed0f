"""Image transforms: joint image+mask augmentation (torchvision v2) and the preprocessing module.

:class:`Preprocess` is an ``nn.Module`` built from an :class:`~bloodml.data.input_spec.InputSpec`, so the exact
preprocessing a model was trained with travels inside the logged model: colour space, stain normalisation, and
normalisation statistics (fitted on training images only, by :func:`fit_input_spec`).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from .input_spec import InputSpec


def build_augmentation(rotation: float, shift: float, shear: float, zoom: float, hflip: bool, vflip: bool,
                       brightness: float) -> v2.Compose | None:
    """The student study's augmentation set; geometric steps move the mask with the image, colour steps skip it."""
    steps: list = []
    if rotation or shift or shear or zoom:
        steps.append(v2.RandomAffine(degrees=rotation, translate=(shift, shift) if shift else None,
                                     scale=(1 - zoom, 1 + zoom) if zoom else None, shear=shear or None))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if vflip:
        steps.append(v2.RandomVerticalFlip())
    if brightness:
        steps.append(v2.ColorJitter(brightness=brightness))
    return v2.Compose(steps) if steps else None


def augment(images: torch.Tensor, regions: torch.Tensor, transform: v2.Compose | None):
    """Augment each (image, region map) pair jointly. uint8 in, uint8 out; draws from torch's global RNG."""
    if transform is None:
        return images, regions
    out_images, out_regions = [], []
    for image, region in zip(images, regions):
        image_t, region_t = transform(tv_tensors.Image(image), tv_tensors.Mask(region))
        out_images.append(image_t.as_subclass(torch.Tensor))
        out_regions.append(region_t.as_subclass(torch.Tensor))
    return torch.stack(out_images), torch.stack(out_regions)


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
    training split's network input) only: the Reinhard reference, dataset normalisation; BGR reorders the
    backbone's statistics (Keras VGG's convention)."""
    statistics = {}
    if spec.stain_norm == "reinhard":
        stats = [_masked_mean_std(_rgb_to_lab(chunk), _foreground(chunk)) for chunk in train_images.split(batch)]
        statistics["reference_mean"] = torch.cat([m for m, _ in stats]).mean(0).tolist()
        statistics["reference_std"] = torch.cat([s for _, s in stats]).mean(0).tolist()
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
