"""Classify new images with a logged or registered model, preprocessing them exactly as in training.

The model carries its input specification (size, mask mode and codes, how a mask is found, preprocessing) and
its class names, so the user re-types nothing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .data.dataset import load_batch
from .data.images import is_image_file
from .data.input_spec import InputSpec
from .data.masks import find_mask
from .errors import BloodmlError
from .evaluation.shift import ShiftProfile, descriptors, warning
from .runtime import say
from .segmentation.source import segmenter_for, with_masks_from
from .serving.frames import probability_table
from .tracking.model import load_model


def loaded_model(reference: str):
    """(pyfunc model, class names, input spec, its domain-shift profile or None) of a bloodml model."""
    model, meta = load_model(reference)
    return (model, list(meta["class_names"]), InputSpec.from_metadata(meta),
            ShiftProfile.from_dict(meta.get("shift_profile")))


def shift_check(profile: ShiftProfile | None, points: list) -> dict[str, float]:
    """The domain-shift report of these images against the model's training images (empty for models logged
    before the check existed), with its warning line printed when most are far."""
    if profile is None or not points:
        return {}
    points = np.concatenate(points)
    report = profile.report(points)
    line = warning(report, len(points))
    if line:
        say(line)
    return report


def collect_images(inputs: list[str | Path], pattern: str = "*", exclude: Path | None = None) -> list[Path]:
    """Image files given directly, or found at any depth in given folders (names matching ``pattern``; nothing
    under ``exclude``, the masks folder when it sits inside an input folder)."""
    skip = exclude.resolve() if exclude is not None else None
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            # a masks folder *inside* the input folder is skipped (masks beside the images: use --pattern)
            inside = skip is not None and skip != item.resolve() and skip.is_relative_to(item.resolve())
            files += sorted(p for p in item.rglob(pattern) if p.is_file() and is_image_file(p)
                            and not (inside and p.resolve().is_relative_to(skip)))
        elif item.is_file():
            files.append(item)
        else:
            raise BloodmlError(f"{item}: no such file or folder; pass image files or folders to predict.")
    if not files:
        raise BloodmlError(f"no images found in {', '.join(map(str, inputs))}; pass image files or folders.")
    return files


def model_probabilities(model, spec: InputSpec, paths: list[str], mask_paths: list[str | None], batch: int = 32,
                        mask_codes: str = "", shift: list | None = None) -> np.ndarray:
    """Class probabilities (N, C) of a loaded bloodml model: each image read and masked as ``spec`` says, exactly
    as in training. ``mask_codes`` overrides the codes stored with the model (another lab's masks); ``shift``, a
    list, receives the images' domain-shift descriptors."""
    if mask_codes:
        spec = replace(spec, mask_codes=mask_codes)
    segmenter = segmenter_for(spec)
    parts = []
    for start in range(0, len(paths), batch):
        images, regions = load_batch(paths[start:start + batch], mask_paths[start:start + batch], spec, segmenter)
        x = spec.network_input(images, regions)
        if shift is not None:
            shift.append(descriptors(x))
        parts.append(np.asarray(model.predict(x.numpy().astype(np.float32))))
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def masks_for(files: list[Path], spec: InputSpec, masks_dir: Path | None) -> list[str | None]:
    """Each image's mask under ``masks_dir`` (the rule training used); a masked model needs one for every image
    unless its segmenter draws the missing ones."""
    if not spec.masked or spec.masks_from == "model":
        return [None] * len(files)
    found = []
    for path in files:
        mask = find_mask(path, masks_dir) if masks_dir is not None else None
        if mask is None and spec.segmented:
            found.append(None)
            continue
        if mask is None:
            raise BloodmlError(f"{path}: the model was trained with masks={spec.mask_mode} and needs this image's "
                               f"mask; pass --masks-dir with the mask at the image's sub-path ({path.stem}.*), or "
                               f"--masks-from auto --segmenter <uri> to let a segmenter draw it.")
        found.append(str(mask))
    return found


def predict_images(reference: str, inputs: list[str | Path], masks_dir: str | Path | None = None,
                   batch: int = 32, pattern: str = "*", masks_from: str = "", segmenter: str = "") -> pd.DataFrame:
    """One row per image: file, predicted_label, confidence and p_<class> for every class. A model trained with a
    segmenter uses it for images without a mask; ``masks_from``/``segmenter`` choose another source."""
    model, classes, spec, profile = loaded_model(reference)
    spec = with_masks_from(spec, masks_from, segmenter)
    masks = Path(masks_dir) if masks_dir else None
    if masks is not None and not masks.is_dir():
        raise BloodmlError(f"--masks-dir {masks}: not a folder; pass the folder holding the masks.")
    files = collect_images(inputs, pattern, exclude=masks)
    points: list = []
    probabilities = model_probabilities(model, spec, [str(f) for f in files], masks_for(files, spec, masks), batch,
                                        shift=points)
    shift_check(profile, points)
    table = probability_table(probabilities, classes, label="predicted_label")
    table.insert(0, "file", [str(path) for path in files])
    return table
