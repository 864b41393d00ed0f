"""A contact sheet of attention: one row per patient, its most attended cells then its least attended ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def attention_sheet(patients, weights: list[np.ndarray], images: torch.Tensor, probability: np.ndarray, path: Path,
                    per_side: int = 4, tile: int = 96) -> Path:
    """``images`` (N, 3, S, S) uint8 of the split's cells; ``probability`` each patient's positive probability."""
    label_width = 150
    rows = len(patients.groups)
    sheet = Image.new("RGB", (label_width + tile * (2 * per_side) + 12, 18 + rows * (tile + 16)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((label_width, 2), f"most attended (left) ... least attended (right), {per_side} each", fill="black")
    for r, (group, cells, w) in enumerate(zip(patients.groups, patients.cells, weights)):
        y = 18 + r * (tile + 16)
        truth = "" if patients.positive is None else f" truth {'pos' if patients.positive[r] else 'neg'}"
        draw.text((4, y + tile // 2 - 12), f"{group}{truth}\np(pos) {probability[r]:.2f}, {len(cells)} cells",
                  fill="black")
        order = np.argsort(-w)
        picks = list(order[:per_side]) + list(order[-per_side:] if len(order) > per_side else [])
        for k, i in enumerate(picks):
            x = label_width + k * tile + (12 if k >= per_side else 0)
            cell = Image.fromarray(images[cells[i]].permute(1, 2, 0).numpy()).resize((tile - 4, tile - 4))
            sheet.paste(cell, (x, y))
            draw.text((x + 2, y + tile - 4), f"{w[i]:.3f}", fill="black")
    sheet.save(path)
    return path
