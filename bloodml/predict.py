"""Classify new images with a logged or registered model, preprocessing them exactly as in training.

The model carries its preprocessing; its metadata gives the input size, the mask mode, the mask codes and the
class names, so the user re-types nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException

from .data.dataset import load_sample
from .data.images import is_image_file
from .data.masks import parse_mask_codes
from .errors import BloodmlError
from .tracking.model import HASH_TAG, directory_sha256
from .tracking.registry import model_uri
from .training.features import network_input


def _source_run(uri: str) -> str | None:
    client = mlflow.MlflowClient()
    if uri.startswith("runs:/"):
        return uri.split("/")[1]
    if uri.startswith("models:/"):
        name = uri[len("models:/"):]
        if "@" in name:
            model_name, alias = name.split("@", 1)
            return client.get_model_version_by_alias(model_name, alias).run_id
        model_name, _, version = name.partition("/")
        return client.get_model_version(model_name, version).run_id if version.isdigit() else None
    return None


def load_model(reference: str):
    """Download a bloodml model, check its files against the hash recorded at training time, then load it."""
    uri = model_uri(reference)
    hint = ("pass models:/<name>@<alias>, runs:/<run_id>/model or a run ID, with MLFLOW_TRACKING_URI set to "
            "its store.")
    try:
        run_id = _source_run(uri)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp))
            expected = mlflow.MlflowClient().get_run(run_id).data.tags.get(HASH_TAG) if run_id else None
            if expected and directory_sha256(local) != expected:
                raise BloodmlError(f"model '{reference}': its files differ from those recorded when it was trained "
                                   f"(SHA-256 mismatch); refusing to load them. Re-log or re-register the model.")
            model = mlflow.pyfunc.load_model(str(local))
    except (MlflowException, OSError) as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise BloodmlError(f"model '{reference}' could not be loaded ({first}); {hint}")
    meta = (model.metadata.metadata or {})
    if "class_names" not in meta:
        raise BloodmlError(f"model '{reference}' was not trained by bloodml (no class names in its metadata).")
    return model, meta


def collect_images(inputs: list[str | Path], pattern: str = "*") -> list[Path]:
    """Image files given directly, or found at any depth in given folders (names matching ``pattern``)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob(pattern) if p.is_file() and is_image_file(p))
        elif item.is_file():
            files.append(item)
        else:
            raise BloodmlError(f"{item}: no such file or folder; pass image files or folders to predict.")
    if not files:
        raise BloodmlError(f"no images found in {', '.join(map(str, inputs))}; pass image files or folders.")
    return files


def _mask_for(image: Path, masks_dir: Path | None) -> str | None:
    if masks_dir is None:
        return None
    candidates = sorted(p for p in masks_dir.rglob(f"{image.stem}.*") if p.is_file())
    return str(candidates[0]) if candidates else None


def model_probabilities(model, meta: dict, paths: list[str], mask_paths: list[str | None], batch: int = 32,
                        mask_codes: str = "") -> np.ndarray:
    """Class probabilities (N, C) of a loaded bloodml model: each image read at the model's size and masked with
    its mask mode, exactly as in training. ``mask_codes`` overrides the codes stored with the model."""
    size, mode = int(meta["image_size"]), meta.get("mask_mode", "none")
    codes_text = mask_codes or meta.get("mask_codes", "")
    codes = parse_mask_codes(codes_text) if codes_text else None
    parts = []
    for start in range(0, len(paths), batch):
        samples = [load_sample(str(p), m if isinstance(m, str) and m else None, size, codes)
                   for p, m in zip(paths[start:start + batch], mask_paths[start:start + batch])]
        x = network_input(torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples]), mode)
        parts.append(np.asarray(model.predict(x.numpy().astype(np.float32))))
    return np.concatenate(parts) if parts else np.zeros((0, len(meta["class_names"])))


def predict_images(reference: str, inputs: list[str | Path], masks_dir: str | Path | None = None,
                   batch: int = 32, pattern: str = "*") -> pd.DataFrame:
    """One row per image: file, predicted_label, confidence and p_<class> for every class."""
    model, meta = load_model(reference)
    classes, mode = meta["class_names"], meta.get("mask_mode", "none")
    files = collect_images(inputs, pattern)
    masks = Path(masks_dir) if masks_dir else None
    if masks is not None and not masks.is_dir():
        raise BloodmlError(f"--masks-dir {masks}: not a folder; pass the folder holding the masks.")
    mask_paths = []
    for path in files:
        mask = _mask_for(path, masks) if mode != "none" else None
        if mode != "none" and mask is None:
            raise BloodmlError(f"{path}: the model was trained with masks={mode} and needs this image's mask; "
                               f"pass --masks-dir with a mask named like the image ({path.stem}.*).")
        mask_paths.append(mask)
    probabilities = model_probabilities(model, meta, [str(f) for f in files], mask_paths, batch)
    return pd.DataFrame([{"file": str(path), "predicted_label": classes[int(p.argmax())], "confidence": float(p.max()),
                          **{f"p_{name}": float(v) for name, v in zip(classes, p)}}
                         for path, p in zip(files, probabilities)])
