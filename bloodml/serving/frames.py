"""Image-in classification: a request table (one row per image: the image file's bytes, or base64 text, and
optionally its mask file's) -> one row per image: ``label``, ``confidence`` and ``p_<class>`` for every class.

Pure: the network's predict function, the class names, the input specification and the segmenter are given (the
served model in :mod:`bloodml.serving.image_model` gives them); images are decoded, masked, cropped and resized
by :func:`bloodml.inputs.dataset.decode_sample`, exactly as training read the same files from disk.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..inputs.dataset import Segmenter, decode_sample
from ..inputs.input_spec import InputSpec
from ..errors import BloodmlError
from ..evaluation.calls import CallRule, called

IMAGE, MASK = "image", "mask"
LABEL, CONFIDENCE = "label", "confidence"


def probability_column(name: str) -> str:
    return f"p_{name}"


def probability_table(probabilities: np.ndarray, classes: list[str], label: str = LABEL,
                      rule: CallRule = CallRule()) -> pd.DataFrame:
    """(N, C) class probabilities -> the call (by the model's ``rule``), its probability and one ``p_<class>`` column
    per class."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1, len(classes))
    calls = called(probabilities, rule.positive, rule.threshold)
    table = pd.DataFrame({label: [classes[int(i)] for i in calls],
                          CONFIDENCE: probabilities[np.arange(len(calls)), calls] if len(probabilities) else []})
    for index, name in enumerate(classes):
        table[probability_column(name)] = probabilities[:, index]
    return table


def file_bytes(value, name: str) -> bytes | None:
    """A cell's value as a file's bytes: bytes as they are, text as base64 (a ``data:...;base64,`` prefix is
    allowed); None for an empty cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
        if not text.strip():
            return None
        try:
            return base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise BloodmlError(f"{name}: text that is not base64; send the file's bytes, base64-encoded.")
    raise BloodmlError(f"{name}: a {type(value).__name__}, not a file; send the file's bytes (base64 text in JSON).")


def request_files(frame) -> list[tuple[bytes, bytes | None]]:
    """(image bytes, mask bytes or None) of every row of a request table."""
    if not isinstance(frame, pd.DataFrame) or IMAGE not in frame.columns:
        got = ", ".join(map(str, frame.columns)) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise BloodmlError(f"the request needs a column '{IMAGE}' (an image file's bytes; base64 text in JSON) and "
                           f"may have '{MASK}'; got {got or 'no columns'}.")
    masks = frame[MASK] if MASK in frame.columns else [None] * len(frame)
    files = []
    for row, (image, mask) in enumerate(zip(frame[IMAGE], masks)):
        image_bytes = file_bytes(image, f"row {row} image")
        if image_bytes is None:
            raise BloodmlError(f"row {row}: no image; every row needs an image file's bytes.")
        files.append((image_bytes, file_bytes(mask, f"row {row} mask")))
    return files


def classify_frame(frame: pd.DataFrame, predict: Callable[[np.ndarray], np.ndarray], classes: list[str],
                   spec: InputSpec, segmenter: Segmenter | None = None, batch: int = 32,
                   rule: CallRule = CallRule()) -> pd.DataFrame:
    """Classify every row's image: decoded, masked (its mask, else the segmenter's map), cropped and resized as
    ``spec`` says, then ``predict`` (the network: float32 (N,3,S,S) in [0,1] -> (N,C) probabilities) in batches.
    A bad row stops the request with one line naming the row."""
    samples = [decode_sample(image, mask, spec, segmenter, f"row {row}")
               for row, (image, mask) in enumerate(request_files(frame))]
    if not samples:
        return probability_table(np.zeros((0, len(classes))), classes, rule=rule)
    images = torch.stack([s[0] for s in samples])
    regions = torch.stack([s[1] for s in samples])
    parts = [np.asarray(predict(spec.network_input(images[i:i + batch], regions[i:i + batch]).numpy()))
             for i in range(0, len(samples), batch)]
    return probability_table(np.concatenate(parts), classes, rule=rule)
