"""What the network sees, fixed once: the input specification travels unchanged from the run configuration
through training, evaluation, tuning and studies into the logged model, and is read back whole by predict and
evaluate.

An :class:`InputSpec` says how a file becomes the network's input: the square size, how a mask is found for an
image and decoded (codes, stray tolerance), which regions are kept (mask mode), and the preprocessing inside the
model (colour space, stain normalisation, normalisation with its statistics fitted on the training split).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from ..compute import send
from ..errors import BloodmlError
from ..data.masks import CROP_MODES, MASK_LOOKUP, MASK_MODES, parse_mask_codes
from .stain import REFERENCE_MATRIX, REFERENCE_MAX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def apply_mask(images: torch.Tensor, regions: torch.Tensor, mode: str) -> torch.Tensor:
    """Zero the pixels outside the regions kept by ``mode`` (images (N,3,H,W), region maps (N,H,W))."""
    if mode not in MASK_MODES:
        raise BloodmlError(f"masks='{mode}' is unknown; use one of {', '.join(MASK_MODES)}.")
    keep = MASK_MODES[mode]
    if keep is None:
        return images
    inside = torch.isin(regions, send(torch.tensor(keep, dtype=regions.dtype), regions.device))
    return images * inside.unsqueeze(1).to(images.dtype)


@dataclass(frozen=True)
class InputSpec:
    image_size: int = 128
    mask_mode: str = "none"  # none / cell / nucleus / background: the regions kept, the rest set to zero
    mask_codes: str = ""  # as the user wrote them ('' : recognised from the mask's values)
    mask_stray_tolerance: float = 0.01
    mask_lookup: str = MASK_LOOKUP
    masks_from: str = "expert"  # expert (mask files), auto (expert, else the segmenter), model (the segmenter only)
    segmenter: str = ""  # the segmenter's runs:/<id>/segmenter URI when masks_from is auto or model
    crop_margin: float = 0.1  # masks=crop/crop_cell: margin around the cell's box, a share of its larger side
    color_space: str = "rgb"
    stain_norm: str = "none"
    normalize: str = "imagenet"
    mean: tuple[float, ...] = IMAGENET_MEAN  # normalisation statistics (the backbone's, or fitted on training)
    std: tuple[float, ...] = IMAGENET_STD
    reference_mean: tuple[float, ...] = (0.0, 0.0, 0.0)  # Reinhard target (fitted on training)
    reference_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    stain_matrix: tuple[float, ...] = REFERENCE_MATRIX  # Macenko target stain vectors, 3x2 row-major (fitted)
    stain_max: tuple[float, ...] = REFERENCE_MAX  # Macenko target maximal concentrations (fitted on training)

    def __post_init__(self):
        if self.mask_mode not in MASK_MODES:
            raise BloodmlError(f"masks='{self.mask_mode}' is unknown; use one of {', '.join(MASK_MODES)}.")
        self.codes()  # malformed codes fail here, once, with the one-line message

    @classmethod
    def from_config(cls, config, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> "InputSpec":
        """From a RunConfig, before fitting: the normalisation statistics start as the backbone's."""
        source, segmenter = config.masks_from, config.segmenter
        if source.startswith("model:"):
            source, segmenter = "model", source[len("model:"):]
        return cls(image_size=config.image_size, mask_mode=config.masks, mask_codes=config.mask_codes,
                   masks_from=source if config.masks != "none" else "expert",
                   segmenter=segmenter if config.masks != "none" else "", crop_margin=config.crop_margin,
                   mask_stray_tolerance=config.mask_stray_tolerance, color_space=config.color_space,
                   stain_norm=config.stain_norm, normalize=config.normalize, mean=tuple(mean), std=tuple(std))

    @property
    def masked(self) -> bool:
        return self.mask_mode != "none"

    @property
    def cropped(self) -> bool:
        return self.mask_mode in CROP_MODES

    @property
    def segmented(self) -> bool:
        """Whether a segmenter makes region maps (for images without an expert mask, or for every image)."""
        return self.masked and self.masks_from != "expert"

    def codes(self) -> dict | None:
        return parse_mask_codes(self.mask_codes) if self.mask_codes else None

    def fitted(self, **statistics) -> "InputSpec":
        """A copy with statistics fitted on the training split (mean, std, the Reinhard and Macenko targets)."""
        return replace(self, **{k: tuple(float(x) for x in v) for k, v in statistics.items()})

    def network_input(self, images: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """uint8 images (N,3,S,S) and region maps (N,S,S) -> float [0,1] RGB with the mask mode applied: the
        exported model's input."""
        return apply_mask(images, regions, self.mask_mode).float().div_(255.0)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "InputSpec":
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, (list, np.ndarray)) else v for k, v in values.items()
                      if k in known})

    @classmethod
    def from_metadata(cls, meta: dict) -> "InputSpec":
        """Read back from a logged model's metadata (models logged before the spec existed carry loose keys)."""
        if isinstance(meta.get("input_spec"), dict):
            return cls.from_dict(meta["input_spec"])
        return cls(image_size=int(meta["image_size"]), mask_mode=meta.get("mask_mode", "none"),
                   mask_codes=meta.get("mask_codes", "") or "")
