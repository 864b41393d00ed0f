"""Acquisition augmentation: what changes when the microscope, camera, stain or lab changes, simulated on
training images (batched, on any device; the region map is untouched, no pixel moves).

Per image: per-channel gain, gamma, stain jitter in the haematoxylin-eosin-DAB space (Ruifrok & Johnston's
colour deconvolution, as in histopathology's HED augmentation, Tellez et al. 2018), hue and saturation, a mix
towards grey, Gaussian blur, down-then-up sampling, and JPEG re-encoding. Every magnitude 0 = off.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ..compute import send

# Ruifrok & Johnston's stain vectors (haematoxylin, eosin, DAB), rows in optical-density RGB (skimage.color.rgb2hed).
_HED_FROM_RGB_INV = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
_RGB_FROM_HED = _HED_FROM_RGB_INV / _HED_FROM_RGB_INV.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_GREY = torch.tensor([0.299, 0.587, 0.114])
# RGB <-> YIQ: a hue shift is a rotation of (I, Q) around the grey axis.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
_READ_ON_HOST = ("blur", "resample", "jpeg")  # per-image values read in Python: never sent to the device


@dataclass(frozen=True)
class Acquisition:
    gain: float = 0.0  # per-channel gain 1 +/- gain
    gamma: float = 0.0  # gamma exp(U(-gamma, gamma))
    hed: float = 0.0  # each stain's concentration x (1 + U(-hed, hed)) + U(-hed, hed) x 0.1
    hue: float = 0.0  # hue shift up to +/- hue of the colour circle (0.5 = half)
    saturation: float = 0.0  # saturation 1 +/- saturation
    grey: float = 0.0  # mix towards the grey image, up to this share
    blur: float = 0.0  # Gaussian blur, sigma U(0, blur) pixels of the network input
    resample: float = 0.0  # down-then-up sampling by a factor U(1 - resample, 1)
    jpeg: int = 0  # JPEG re-encoding at quality U(jpeg, 95) (0: off)

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def draw(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random parameters of ``n`` images (CPU, from ``generator``)."""
        u = lambda *shape: torch.rand(n, *shape, generator=generator, dtype=torch.float64) * 2 - 1  # noqa: E731
        r = lambda: torch.rand(n, generator=generator, dtype=torch.float64)  # noqa: E731
        return {"gain": 1 + u(3) * self.gain, "gamma": torch.exp(u() * self.gamma),
                "hed_scale": 1 + u(3) * self.hed, "hed_shift": u(3) * self.hed * 0.1,
                "hue": u() * self.hue * 2 * math.pi, "saturation": 1 + u() * self.saturation,
                "grey": r() * self.grey, "blur": r() * self.blur, "resample": 1 - r() * self.resample,
                "jpeg": torch.round(self.jpeg + r() * (95 - self.jpeg)) if self.jpeg else torch.zeros(n)}

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """float images (N,3,H,W) in [0,255] -> the same, with the acquisition changes applied."""
        device = images.device
        p = {k: send(v, device, torch.float32) for k, v in params.items() if k not in _READ_ON_HOST}
        x = images / 255.0
        if self.gain:
            x = x * p["gain"][:, :, None, None]
        if self.hed:
            x = _hed_jitter(x.clamp(0, 1), p["hed_scale"], p["hed_shift"])
        if self.hue:
            x = _hue_rotate(x, p["hue"])
        grey = (x * send(_GREY, device)[None, :, None, None]).sum(1, keepdim=True)
        if self.saturation:
            x = grey + p["saturation"][:, None, None, None] * (x - grey)
        if self.grey:
            m = p["grey"][:, None, None, None]
            x = (1 - m) * x + m * grey
        x = x.clamp(0, 1)
        if self.gamma:
            x = x.clamp_min(1e-6) ** p["gamma"][:, None, None, None]
        if self.blur or self.resample:
            x = torch.stack([_blur_resample(img, float(s), float(f)) for img, s, f in
                             zip(x, params["blur"].float(), params["resample"].float())])  # host: no wait
        x = x.mul(255.0)
        if self.jpeg:
            x = _jpeg(x, params["jpeg"])
        return x


def _hed_jitter(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    od = -torch.log(x.clamp_min(1e-6))
    to_hed = send(_HED_FROM_RGB, x.device, x.dtype)
    to_rgb = send(_RGB_FROM_HED, x.device, x.dtype)
    concentrations = torch.einsum("nchw,cd->ndhw", od, to_hed)
    concentrations = concentrations * scale[:, :, None, None] + shift[:, :, None, None]
    return torch.exp(-torch.einsum("ndhw,dc->nchw", concentrations, to_rgb))


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    yiq = send(_YIQ, x.device, x.dtype)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(len(angle), 3, 3, device=x.device, dtype=x.dtype)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
    matrix = torch.linalg.inv(yiq) @ rotation @ yiq  # (N,3,3), RGB -> RGB
    return torch.einsum("nij,njhw->nihw", matrix, x)


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    size = 2 * math.ceil(3 * sigma) + 1  # the kernel covers +/- 3 sigma
    return TF.gaussian_blur(x, [size, size], [sigma, sigma])


def _blur_resample(image: torch.Tensor, sigma: float, factor: float) -> torch.Tensor:
    if sigma > 0.05:
        image = _gaussian(image, sigma)
    if factor < 0.99:
        h, w = image.shape[-2:]
        small = F.interpolate(image[None], size=(max(1, round(h * factor)), max(1, round(w * factor))),
                              mode="bilinear", align_corners=False, antialias=True)
        image = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]
    return image


def _jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG round trip per image at its quality (on the CPU; back to the images' device)."""
    device = x.device
    out = []
    for image, q in zip(x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy(), quality):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(q))
        out.append(torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy()).permute(2, 0, 1).float())
    return send(torch.stack(out), device)


def sharpness_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Network inputs (N,3,S,S) blurred with a Gaussian of ``sigma`` pixels, to match the sharpness of a blurrier
    training instrument. A masked input is blurred inside its mask only (normalised convolution): the zeroed
    background neither bleeds in nor gets blurred out."""
    if sigma <= 0.05:
        return x
    keep = (x.abs().sum(1, keepdim=True) > 0).to(x.dtype)
    blurred, weight = _gaussian(x * keep, sigma), _gaussian(keep, sigma)
    return torch.where(keep > 0, blurred / weight.clamp_min(1e-6), torch.zeros_like(x))
