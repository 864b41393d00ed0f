"""Which of a new instrument's unlabelled cells to label first, for ``bloodml adapt``.

:func:`suggest_cells` reads as its steps: the model -> the cells (files, folders or a CSV; masks as predict finds
them) -> each cell's probabilities and backbone features -> copy groups (exact and near copies) -> the order
(uncertainty x diversity, classes taking turns; splitting/selection.py) -> a CSV with an empty ``label`` column
and a contact sheet of the picks.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from .compute import CPU, Compute
from .data.images import read_rgb
from .predict import beside_the_classes, cell_outputs, collect_inputs, masked_inputs, readable_inputs
from .errors import BloodmlError
from .runtime import say
from .splitting.hashing import add_hashes, near_copies
from .splitting.selection import entropy, margin_uncertainty, suggest_order
from .splitting.splits import duplicate_groups
from .tracking.model import load_model


@dataclass
class Suggestion:
    table: pd.DataFrame  # one row per pick, in order: rank, image, label (empty), mask, predicted, ...
    sheet: Image.Image
    copies: list[tuple[Path, Path]]  # picks outside the CSV's folder: (original, its copy beside the CSV)

    def write(self, csv: Path) -> None:
        """The copies, then the CSV (whole or not at all), then the contact sheet beside it."""
        for source, copy in self.copies:
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy)
        partial = csv.with_name(csv.name + ".partial")
        self.table.to_csv(partial, index=False)
        partial.replace(csv)
        self.sheet.save(csv.with_suffix(".png"))


def copy_groups(paths: list[str], near_distance: int, similarity: float) -> np.ndarray:
    """One group per set of exact or near copies (the rule the splits use)."""
    table = add_hashes(pd.DataFrame({"path": paths}), progress=False)
    return duplicate_groups(table, near_copies(table, near_distance, similarity)).to_numpy()


def contact_sheet(table: pd.DataFrame, tile: int = 128, columns: int = 5) -> Image.Image:
    """The picks as a grid of thumbnails, each captioned with its rank, the model's call and its confidence."""
    rows = (len(table) + columns - 1) // columns
    caption = 30
    sheet = Image.new("RGB", (columns * tile, max(rows, 1) * (tile + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, row in enumerate(table.itertuples(index=False)):
        x, y = (index % columns) * tile, (index // columns) * (tile + caption)
        image = Image.fromarray(read_rgb(row.original))
        image.thumbnail((tile, tile))
        sheet.paste(image, (x + (tile - image.width) // 2, y + (tile - image.height) // 2))
        draw.text((x + 3, y + tile + 2), f"#{row.rank} {Path(row.image).name[:16]}", fill="black")
        draw.text((x + 3, y + tile + 15), f"{row.predicted} {row.confidence:.2f}", fill="dimgray")
    return sheet


def placed(paths: list[str], folder: Path, subfolder: str) -> tuple[list[str], list[tuple[Path, Path]]]:
    """Each path as the CSV in ``folder`` lists it: relative to the CSV when the file lies inside its folder (bloodml
    reads a manifest's images only there); otherwise a copy in ``subfolder`` beside the CSV. Returns (the listed
    paths, the (original, copy) pairs to make)."""
    listed, copies = [], []
    for index, path in enumerate(paths):
        if not path:
            listed.append("")
            continue
        source = Path(path).resolve()
        if source.is_relative_to(folder.resolve()):
            listed.append(os.path.relpath(source, folder.resolve()))
            continue
        copy = Path(subfolder) / f"{index + 1:03d}_{source.name}"
        copies.append((source, folder / copy))
        listed.append(str(copy))
    return listed, copies


def suggest_cells(reference: str, inputs: list[str], n: int, output: Path, masks_dir: str = "",
                  near_distance: int = 8, similarity: float = 0.76, uncertainty_weight: float = 0.5,
                  compute: Compute = CPU) -> Suggestion:
    """The ``n`` cells to label first among ``inputs``, as a table ready to fill in (written by the caller)."""
    model, _ = load_model(reference, network=True)
    spec = model.spec
    masks = Path(masks_dir) if masks_dir else beside_the_classes(inputs)
    if masks is not None and not masks.is_dir():
        raise BloodmlError(f"--masks-dir {masks}: not a folder; pass the folder holding the masks.")
    files, _ = collect_inputs(inputs, "*", masks)
    if not files:
        raise BloodmlError(f"no images found in {', '.join(map(str, inputs))}; pass image files, folders or a CSV.")
    files, _ = readable_inputs(files, None)
    files, _, mask_paths = masked_inputs(files, None, spec, masks)
    paths = [str(f) for f in files]
    say(f"suggest: {len(paths)} unlabelled cells; model {reference} ({', '.join(model.class_names)})")
    probabilities, features = cell_outputs(model, paths, mask_paths, compute=compute)
    groups = copy_groups(paths, near_distance, similarity)
    order = suggest_order(features, probabilities, groups, n, uncertainty_weight)
    group_size = pd.Series(groups).value_counts()
    folder = output.parent
    images, copies = placed([paths[i] for i in order], folder, f"{output.stem}_cells")
    masks, mask_copies = placed([mask_paths[i] or "" for i in order], folder, f"{output.stem}_cells/masks")
    table = pd.DataFrame({
        "rank": range(1, len(order) + 1),
        "image": images,
        "label": "",
        **({"mask": masks} if any(mask_paths) else {}),
        "predicted": [model.class_names[int(probabilities[i].argmax())] for i in order],
        "confidence": [round(float(probabilities[i].max()), 4) for i in order],
        "margin_uncertainty": margin_uncertainty(probabilities[order]).round(4) if order else [],
        "entropy": entropy(probabilities[order]).round(4) if order else [],
        "copies": [int(group_size[groups[i]]) - 1 for i in order],
        "original": [str(Path(paths[i]).resolve()) for i in order],
    })
    return Suggestion(table, contact_sheet(table), copies + mask_copies)
