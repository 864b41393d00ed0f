"""The data pipeline of one run, as named steps: read -> label -> check masks -> hash and group copies -> split
-> audit. Training, tuning, studies and `data inspect` all go through it. No MLflow here."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from ..config import PARAMETERS, RunConfig, replace as replace_config
from ..errors import BloodmlError
from ..runtime import say
from .audit import find_leaks
from ..data.fetch import locate
from .hashing import add_hashes, near_copies
from ..data.images import first_few
from ..data.labels import apply_class_names, class_order, default_class_names, drop_rare_classes, group_binary, \
    merge_case_variants, parse_class_names
from ..data.readers import ReaderOptions, read_dataset, unused_csv_note
from ..data.sources import LAYOUT_OPTIONS, apply_label_map, check_across, is_collection, parse_sources, \
    sample_per_class, source_name
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
    """Samples with final class names and their ``source``, rare classes dropped. Returns (table, format, root,
    notes). ``data=`` may name several sources (a comma list or a data collection): each is read and labelled on
    its own, mapped to the common class names, then pooled."""
    if is_collection(config.data):
        return read_sources(config, workdir)
    table, fmt, root, notes = read_one(config, workdir)
    table, rare = drop_rare_classes(binary(table, config), config.min_class_count)
    return table.assign(source=source_name(config.data)), fmt, root, notes + rare


def read_sources(config: RunConfig, workdir: Path | None = None) -> tuple[pd.DataFrame, str, Path, list[str]]:
    """Every source of ``config.data``, each under its label map and cap, checked across sources, then pooled.
    Groups (patients) are kept apart between sources; the root is the sources' common folder."""
    sources = parse_sources(config.data)
    tables, formats, roots, notes = {}, [], [], []
    for source in sources:
        defaults = {name: PARAMETERS[name].default for name in LAYOUT_OPTIONS}
        sub = replace_config(config, **{**defaults, **source.options, "data": source.data})
        try:
            table, fmt, root, read_notes = read_one(sub, workdir)
            table, mapped = apply_label_map(table, source)
            table, sampled = sample_per_class(table, source, config.seed)
        except BloodmlError as error:
            message = str(error)
            raise BloodmlError(message if source.name in message else f"source {source.name}: {message}") from None
        tables[source.name] = table.assign(source=source.name, group=table["group"].map(
            lambda g, name=source.name: f"{name}:{g}" if isinstance(g, str) and g else None))
        formats.append(fmt)
        roots.append(Path(root).resolve())
        notes += [f"source {source.name}: {note}" for note in read_notes] + mapped + sampled
    check_across(tables, sources)
    table = binary(pd.concat(tables.values(), ignore_index=True), config)
    table, rare = drop_rare_classes(table, config.min_class_count)
    counts = table.groupby("source")["label"].agg(["size", "nunique"])
    notes.append("sources: " + "; ".join(f"{name} {int(row['size'])} images, {int(row['nunique'])} classes"
                                         for name, row in counts.loc[[s.name for s in sources
                                                                      if s.name in counts.index]].iterrows()))
    root = Path(os.path.commonpath([str(r) for r in roots]))
    return table, "+".join(dict.fromkeys(formats)), root, notes + rare


def read_one(config: RunConfig, workdir: Path | None = None) -> tuple[pd.DataFrame, str, Path, list[str]]:
    """One dataset's samples with final class names (before rare classes are dropped)."""
    options = reader_options(config)
    table, fmt, root = read_dataset(locate(config.data) or config.data, options, workdir)
    read_notes = list(table.attrs.get("notes", []))  # rows the reader left out
    unused = unused_csv_note(root, fmt, options)
    names = parse_class_names(config.class_names) if config.class_names else default_class_names(fmt)
    table = apply_class_names(table, names)
    table, merged = merge_case_variants(table)
    return table, fmt, root, read_notes + ([unused] if unused else []) + merged


def binary(table: pd.DataFrame, config: RunConfig) -> pd.DataFrame:
    """positive_classes: the positive classes vs the rest (after every source's label map)."""
    if not config.positive_classes:
        return table
    return group_binary(table, config.positive_classes.split(","), config.negative_name)


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
