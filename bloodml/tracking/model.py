"""Logging the trained model so that mlflow.pytorch.load_model and pyfunc predict work in a fresh process."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import timm
import torch
import torchvision
from mlflow.models import infer_signature

from ..models.classifier import BloodCellClassifier


def model_metadata(model: BloodCellClassifier, extra: dict | None = None) -> dict:
    return {"class_names": list(model.class_names), "image_size": int(model.image_size),
            "mask_mode": model.mask_mode, "input": "float32 RGB in [0,1], shape (N,3,S,S), masked as mask_mode",
            "output": "class probabilities (N,C) in class_names order", **(extra or {})}


def log_model(model: BloodCellClassifier, example: torch.Tensor, extra_metadata: dict | None = None):
    """Log as a PT2 graph (``torch.export``: loading runs no pickled code) with signature, input example,
    explicit requirements (no inference subprocess) and the class names/preprocessing facts as metadata."""
    model = model.eval()
    example_np = example[:2].numpy().astype(np.float32)
    with torch.no_grad():
        output = model(example[:2]).numpy()
    signature = infer_signature(example_np, output)
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
                    f"timm=={timm.__version__}", f"numpy=={np.__version__}"]
    info = mlflow.pytorch.log_model(
        model, name="model", signature=signature, input_example=example_np, pip_requirements=requirements,
        serialization_format="pt2", metadata=model_metadata(model, extra_metadata),
    )
    with tempfile.TemporaryDirectory() as tmp:  # the hash of what the store holds, recorded in the tracking DB
        local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=tmp)
        mlflow.set_tag(HASH_TAG, directory_sha256(Path(local)))
    return info


HASH_TAG = "bloodml.model_sha256"
# Written by MLflow into the model folder when a version is registered: bookkeeping, not model content.
UNHASHED = {"registered_model_meta"}


def directory_sha256(folder: Path) -> str:
    """SHA-256 over every file's relative path and bytes (sorted), so any changed, added or removed file shows."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in UNHASHED):
        digest.update(str(path.relative_to(folder)).encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
