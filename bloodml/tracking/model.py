"""Logging the trained model so that mlflow.pytorch.load_model and pyfunc predict work in a fresh process."""

from __future__ import annotations

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
    return mlflow.pytorch.log_model(
        model, name="model", signature=signature, input_example=example_np, pip_requirements=requirements,
        serialization_format="pt2", metadata=model_metadata(model, extra_metadata),
    )
