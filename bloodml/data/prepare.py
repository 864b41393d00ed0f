"""The data pipeline of one run: read -> label -> check masks -> hash -> split -> audit. No MLflow here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ..config import RunConfig
from ..errors import BloodmlError
from .audit import find_leaks
from .hashing import hash_image
from .labels import apply_class_names, class_order, default_class_names, drop_rare_classes, group_binary, \
    parse_class_names
from .masks import parse_mask_codes
from .readers import ReaderOptions, read_dataset
from .splits import assign_splits


@dataclass
class PreparedData:
    table: pd.DataFrame  # path, label, mask_path, group, source, sha256, phash, split
    classes: list[str]
    root: Path
    format: str
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> pd.DataFrame:
        return self.table.loc[self.table["split"] == name].reset_index(drop=True)


def reader_options(config: RunConfig) -> ReaderOptions:
    return ReaderOptions(format=config.format, manifest=config.manifest, image_column=config.image_column,
                         label_column=config.label_column, mask_column=config.mask_column,
                         group_column=config.group_column, masks_dir=config.masks_dir,
                         image_suffix=config.image_suffix, mask_suffix=config.mask_suffix)


def mask_codes(config: RunConfig) -> dict | None:
    return parse_mask_codes(config.mask_codes) if config.mask_codes else None


def read_labelled(config: RunConfig, workdir: Path | None = None) -> tuple[pd.DataFrame, str, Path, list[str]]:
    """Samples with final class names, rare classes dropped. Returns (table, format, root, notes)."""
    table, fmt, root = read_dataset(config.data, reader_options(config), workdir)
    names = parse_class_names(config.class_names) if config.class_names else default_class_names(fmt)
    table = apply_class_names(table, names)
    if config.positive_classes:
        table = group_binary(table, config.positive_classes.split(","), config.negative_name)
    table, notes = drop_rare_classes(table, config.min_class_count)
    return table, fmt, root, notes


def require_masks(table: pd.DataFrame, mask_mode: str) -> None:
    if mask_mode == "none":
        return
    missing = table.loc[table["mask_path"].isna()]
    if len(missing):
        raise BloodmlError(f"{missing['path'].iloc[0]}: no mask found ({len(missing)} of {len(table)} images lack "
                           f"one) but masks={mask_mode}; add the masks (mask column / masks_dir) or use masks=none.")
    absent = [p for p in table["mask_path"] if not Path(p).is_file()]
    if absent:
        raise BloodmlError(f"{absent[0]}: mask file not found; fix the mask path or use masks=none.")


def add_hashes(table: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    hashes = [hash_image(p) for p in tqdm(table["path"], desc="hashing images", disable=not progress, leave=False)]
    return table.assign(sha256=[h[0] for h in hashes], phash=[h[1] for h in hashes])


def prepare(config: RunConfig, workdir: Path | None = None, progress: bool = True) -> PreparedData:
    table, fmt, root, notes = read_labelled(config, workdir)
    require_masks(table, config.masks)
    table = add_hashes(table, progress)
    table = assign_splits(table, config.val_fraction, config.test_fraction, config.seed,
                          config.near_duplicate_distance)
    leaks = find_leaks(table, config.near_duplicate_distance)
    if leaks:  # cannot happen by construction; refuse to train if it ever does
        raise BloodmlError(f"internal split check failed: {leaks[0].line()}; please report this.")
    copies = int((table.groupby("group").size() > 1).sum())
    if copies:
        notes.append(f"{copies} group(s) of copies or near-copies kept on one side of the split")
    return PreparedData(table, class_order(table), Path(root), fmt, notes)
