"""The data pipeline of one run, as named steps: read -> label -> check masks -> hash and group copies -> split
-> audit. Training, tuning, studies and `data inspect` all go through it. No MLflow here."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from ..config import RunConfig
from ..errors import BloodmlError
from ..runtime import say
from .audit import find_leaks
from ..data.fetch import locate
from .hashing import add_hashes, near_copies
from ..data.images import first_few
from ..data.labels import apply_class_names, class_order, default_class_names, drop_rare_classes, group_binary, \
    merge_case_variants, parse_class_names
from ..data.readers import ReaderOptions, read_dataset, unused_csv_note
from .splits import assign_splits, check_group_labels, check_one_label_per_group, drop_conflicting_copies, \
    duplicate_groups


@dataclass
class PreparedData:
    table: pd.DataFrame  # path, label, mask_path, group, source, sha256, phash, fingerprint[, split]
    classes: list[str]
    root: Path
    format: str
    notes: list[str] = field(default_factory=list)
    copies: list = field(default_factory=list)  # near-copy pairs (i, j, similarity) by row position

    def split(self, name: str) -> pd.DataFrame:
        return self.table.loc[self.table["split"] == name].reset_index(drop=True)


LONG_STEP_IMAGES = 2_000  # from this many images, the copy search says how long it took


def reader_options(config: RunConfig) -> ReaderOptions:
    return ReaderOptions(format=config.format, manifest=config.manifest, image_column=config.image_column,
                         label_column=config.label_column, mask_column=config.mask_column,
                         group_column=config.group_column, masks_dir=config.masks_dir,
                         image_suffix=config.image_suffix, mask_suffix=config.mask_suffix,
                         manifest_query=config.manifest_query)


def read_labelled(config: RunConfig, workdir: Path | None = None) -> tuple[pd.DataFrame, str, Path, list[str]]:
    """Samples with final class names, rare classes dropped. Returns (table, format, root, notes)."""
    options = reader_options(config)
    table, fmt, root = read_dataset(locate(config.data) or config.data, options, workdir)
    read_notes = list(table.attrs.get("notes", []))  # rows the reader left out
    unused = unused_csv_note(root, fmt, options)
    names = parse_class_names(config.class_names) if config.class_names else default_class_names(fmt)
    table = apply_class_names(table, names)
    table, merged = merge_case_variants(table)
    if config.positive_classes:
        table = group_binary(table, config.positive_classes.split(","), config.negative_name)
    table, notes = drop_rare_classes(table, config.min_class_count)
    return table, fmt, root, read_notes + ([unused] if unused else []) + merged + notes


# Images without a mask that a masked mode leaves out with a note (stragglers); more than this share is refused.
UNMASKED_TOLERANCE = 0.05


def without_unmasked(table: pd.DataFrame, mask_mode: str, masks_from: str = "expert") -> tuple[pd.DataFrame, list[str]]:
    """A masked mode with expert masks only: a few images without a mask (at most ``UNMASKED_TOLERANCE`` of them)
    are left out with a note; more are left for :func:`require_masks` to refuse."""
    if mask_mode == "none" or masks_from != "expert":
        return table, []
    lacking = table["mask_path"].isna()
    if not lacking.any() or lacking.mean() > UNMASKED_TOLERANCE:
        return table, []
    names = first_few([Path(path).name for path in table.loc[lacking, "path"]])
    note = (f"left out {int(lacking.sum())} of {len(table)} images without a mask, since masks={mask_mode} needs one: "
            f"{names}; add their masks, or pass masks_from=auto with a segmenter to use them")
    return table.loc[~lacking].reset_index(drop=True), [note]


def require_masks(table: pd.DataFrame, mask_mode: str, masks_from: str = "expert") -> None:
    """A masked mode needs every image's mask, unless a segmenter draws the missing ones (``masks_from`` auto or
    model); a mask path that names no file is refused either way."""
    if mask_mode == "none":
        return
    missing = table.loc[table["mask_path"].isna()]
    if len(missing) and masks_from == "expert":
        raise BloodmlError(f"{missing['path'].iloc[0]}: no mask found ({len(missing)} of {len(table)} images lack "
                           f"one; up to {UNMASKED_TOLERANCE:.0%} would be left out) but masks={mask_mode}; add the "
                           f"masks (mask column / masks_dir), pass masks_from=auto with a segmenter, or use masks=none.")
    absent = [p for p in table["mask_path"].dropna() if not Path(p).is_file()]
    if absent:
        raise BloodmlError(f"{absent[0]}: mask file not found; fix the mask path or use masks=none.")


def group_copies(table: pd.DataFrame, config: RunConfig, progress: bool = True) -> tuple[pd.DataFrame, list,
                                                                                    list[str]]:
    """Hash every image, confirm near copies with a second look, leave out copies whose labels disagree, and give
    copies (and the user's groups) one group. Returns (table with a 'group' column, the near-copy pairs, notes)."""
    started = time.perf_counter()
    table = add_hashes(table.reset_index(drop=True), progress)
    hashed = time.perf_counter()
    copies = near_copies(table, config.near_duplicate_distance, config.copy_similarity, progress)
    if len(table) >= LONG_STEP_IMAGES:  # a plain line per long step (logs and CI have no progress bar)
        say(f"copies: {len(table)} images hashed in {hashed - started:.1f}s; {len(copies)} near-copy pairs confirmed "
            f"in {time.perf_counter() - hashed:.1f}s")
    table, copies, notes = drop_conflicting_copies(table, copies)
    groups = duplicate_groups(table, copies)
    check_group_labels(table, duplicate_groups(table.drop(columns=["group"]), copies))
    merged = int((groups.value_counts() > 1).sum())
    exact = int(table["sha256"].duplicated().sum())
    if merged:
        notes.append(f"{merged} group(s) of copies or shared groups kept on one side of the split ({exact} exact "
                     f"copies, {len(copies)} near-copy pairs confirmed by a second look)")
    # 'group' becomes the split's unit (the user's groups joined by copies); 'source_group' keeps the user's own
    return table.assign(group=groups, source_group=table["group"]), copies, notes


def grouped_data(config: RunConfig, workdir: Path | None = None, progress: bool = True,
                 mask_mode: str | None = None) -> PreparedData:
    """Read, label, check the masks ``mask_mode`` needs (default: the config's), hash and group copies: everything
    before the split (studies make their own folds from it)."""
    table, fmt, root, notes = read_labelled(config, workdir)
    if config.group_labels:
        check_one_label_per_group(table, config.data)
    mode, source = config.masks if mask_mode is None else mask_mode, config.masks_from
    source = "expert" if source == "expert" else "segmenter"
    table, unmasked = without_unmasked(table, mode, source)
    require_masks(table, mode, source)
    table, copies, copy_notes = group_copies(table, config, progress)
    return PreparedData(table, class_order(table), Path(root), fmt, notes + unmasked + copy_notes, copies)


def prepare(config: RunConfig, workdir: Path | None = None, progress: bool = True) -> PreparedData:
    """:func:`grouped_data`, then the seeded, stratified, group-aware split, audited."""
    data = grouped_data(config, workdir, progress)
    table = assign_splits(data.table, config.val_fraction, config.test_fraction, config.seed, data.copies)
    leaks = find_leaks(table, copies=data.copies)
    if leaks:  # cannot happen by construction; refuse to train if it ever does
        raise BloodmlError(f"internal split check failed: {leaks[0].line()}; please report this.")
    return replace(data, table=table)
