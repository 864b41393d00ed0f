"""Leak-proof splits: copies and near-copies share a group, groups never straddle train/val/test.

Pure functions on the sample table; deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from ..errors import BloodmlError
from ..data.images import first_few

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["path", "label", "group", "split", "sha256", "phash", "mask_path", "source_group", "source"]


def duplicate_groups(table: pd.DataFrame, copies=()) -> pd.Series:
    """Union of: the user's group column, identical file content (``sha256``), and the near-copy pairs ``copies``
    ((i, j, ...) by position, from :func:`bloodml.splitting.hashing.near_copies`).

    Returns one group id per row (the smallest row position of the component, as 'g<index>').
    """
    n = len(table)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    for column in ("group", "sha256"):
        if column in table:
            for members in table.groupby(table[column].where(table[column].notna()), sort=False).indices.values():
                for j in members[1:]:
                    union(members[0], j)
    for pair in copies:
        union(int(pair[0]), int(pair[1]))
    return pd.Series([f"g{find(i)}" for i in range(n)], index=table.index)


def drop_conflicting_copies(table: pd.DataFrame, copies=()) -> tuple[pd.DataFrame, list, list[str]]:
    """Copies of one image (same bytes or confirmed near copies) that carry different labels cannot all be right:
    they are left out, each such set named in a note, so the rest of the data can be used. Returns (table with
    a fresh index, the near-copy pairs renumbered, notes)."""
    copy_groups = duplicate_groups(table.drop(columns=["group"], errors="ignore"), copies)
    labels = table.groupby(copy_groups)["label"].nunique()
    conflicting = labels[labels > 1].index
    if not len(conflicting):
        return table, list(copies), []
    drop = copy_groups.isin(conflicting).to_numpy()
    if drop.all():
        names = first_few([Path(p).name for p in table["path"]])
        raise BloodmlError(f"each of the {len(table)} images has a copy under another label ({names}), so none can be "
                           f"used: are the files what they should be (not one blank or repeated export)? Fix the "
                           f"images or the labels.")
    notes = []
    for group in conflicting:
        members = table.loc[(copy_groups == group).to_numpy()]
        names = ", ".join(f"{Path(p).name} ({label})" for p, label in zip(members["path"], members["label"]))
        notes.append(f"left out copies of one image with different labels: {names}; fix the labels to use them")
    position = np.cumsum(~drop) - 1
    kept = [(int(position[i]), int(position[j]), *rest) for i, j, *rest in copies if not drop[i] and not drop[j]]
    return table.loc[~drop].reset_index(drop=True), kept, notes


def check_group_labels(table: pd.DataFrame, groups: pd.Series) -> None:
    """Copies of one image (``groups``: copy groups) must carry one label."""
    mixed = table.groupby(groups)["label"].nunique()
    if (mixed > 1).any():
        members = table.loc[groups == mixed[mixed > 1].index[0]]
        raise BloodmlError(
            f"{members['path'].iloc[0]} and {members['path'].iloc[1]} are copies but carry different labels "
            f"({', '.join(sorted(members['label'].unique()))}); fix the labels or remove one copy."
        )


def check_one_label_per_group(table: pd.DataFrame, source: str) -> None:
    """``group_labels=true``: the label belongs to the group (a patient's diagnosis), so a group whose cells carry
    two labels is an error in the labels; the first such group is named with its labels and counts."""
    if "group" not in table or table["group"].isna().all():
        raise BloodmlError("group_labels=true needs group_column (the column naming each cell's patient or smear).")
    counts = table.dropna(subset=["group"]).groupby(["group", "label"]).size()
    labels_per_group = counts.groupby(level=0).size()
    mixed = labels_per_group[labels_per_group > 1]
    if len(mixed):
        group = mixed.index[0]
        found = ", ".join(f"{label} ({n} cells)" for label, n in counts[group].items())
        raise BloodmlError(f"group {group} in {source}: its cells carry the labels {found}, but group_labels=true says "
                           f"the label belongs to the group; fix its labels or set group_labels=false "
                           f"({len(mixed)} group(s) affected).")


def assign_splits(table: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int,
                  copies=()) -> pd.DataFrame:
    """Stratified, group-aware train/val/test split (``copies`` as for :func:`duplicate_groups`). Returns the table
    with 'group' and 'split' columns."""
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1 and val_fraction + test_fraction < 1):
        raise BloodmlError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must each lie in (0, 1) "
                           f"and add up to less than 1; e.g. 0.15 and 0.15.")
    table = table.reset_index(drop=True).copy()
    groups = duplicate_groups(table, copies)
    check_group_labels(table, duplicate_groups(table.drop(columns=["group"], errors="ignore"), copies))
    table["group"] = groups
    per_group = table.groupby("group", sort=True)["label"].first()
    group_counts = per_group.value_counts()
    test_share = test_fraction
    val_share = val_fraction / (1 - test_fraction)
    for label, n_groups in group_counts.items():
        need = 3
        if n_groups < need or round(n_groups * test_fraction) < 1 or round(n_groups * (1 - test_fraction) * val_share) < 1:
            raise BloodmlError(
                f"class '{label}' has {n_groups} independent image(s): too few for one in each of train/val/test at "
                f"val_fraction={val_fraction}, test_fraction={test_fraction}; add images, raise the fractions, or "
                f"drop it with min_class_count={n_groups + 1}."
            )
    strata_of = table.assign(stratum=strata(table)).groupby("group", sort=True)["stratum"].first()
    ids, labels = strata_of.index.to_numpy(), strata_of.to_numpy()
    try:
        rest_ids, test_ids = train_test_split(ids, test_size=test_share, stratify=labels, random_state=seed)
        rest_labels = strata_of.loc[rest_ids].to_numpy()
        train_ids, val_ids = train_test_split(rest_ids, test_size=val_share, stratify=rest_labels,
                                              random_state=seed + 1)
    except ValueError as exc:
        raise BloodmlError(f"cannot stratify the split ({exc}); add images to small classes or change the fractions.")
    split_of = {**{g: "train" for g in train_ids}, **{g: "val" for g in val_ids}, **{g: "test" for g in test_ids}}
    table["split"] = table["group"].map(split_of)
    return table


def validation_rows(train_rows: np.ndarray, table: pd.DataFrame, val_fraction: float, seed: int) -> set[int]:
    """A stratified, group-aware validation split inside some training rows (for early stopping and checkpoints);
    none at ``val_fraction`` 0 (fixed epochs on every training image)."""
    if val_fraction <= 0:
        return set()
    rows = table.iloc[train_rows]
    groups = rows.assign(stratum=strata(rows)).groupby("group")["stratum"].first()
    try:
        _, val_groups = train_test_split(groups.index.to_numpy(), test_size=val_fraction,
                                         stratify=groups.to_numpy(), random_state=seed)
    except ValueError:
        _, val_groups = train_test_split(groups.index.to_numpy(), test_size=val_fraction, random_state=seed)
    chosen = set(val_groups)
    return {int(i) for i in train_rows if table.iloc[i]["group"] in chosen}


MIN_STRATUM_GROUPS = 6  # a class of one source with fewer independent images is stratified by class alone


def strata(table: pd.DataFrame) -> pd.Series:
    """What a split stratifies on: the class, and with several sources the class within its source (so every split
    holds each source's classes in proportion); a class too rare in one source to stratify is taken by class alone."""
    if "source" not in table or table["source"].nunique() < 2:
        return table["label"].astype(str)
    joint = table["label"].astype(str) + "@" + table["source"].astype(str)
    groups = table.assign(joint=joint).groupby("joint")["group"].nunique() if "group" in table else joint.value_counts()
    rare = set(groups[groups < MIN_STRATUM_GROUPS].index)
    return joint.where(~joint.isin(rare), table["label"].astype(str))


def dataset_name(data: str | Path) -> str:
    """How a dataset is called in the tracker: its folder's name, or a file's folder and name (a zip, a manifest);
    several sources: a collection file's name, or the sources' names joined by '+'."""
    if "," in str(data):
        return "+".join(Path(part.strip().rstrip("/")).name for part in str(data).split(","))
    path = Path(data)
    if path.suffix.lower() in (".yaml", ".yml"):  # a data collection
        return path.stem
    return f"{path.parent.name}/{path.name}" if path.suffix and path.parent.name else path.name or str(data)


def manifest_digest(rows: pd.DataFrame) -> str:
    """A short SHA-256 over what a split holds (each image's content hash, label and group, in any order): the same
    images with the same labels give the same digest wherever the folder sits."""
    keys = ["sha256", "label", "group"] if "sha256" in rows else ["path", "label", "group"]
    lines = sorted("\t".join(str(v) for v in values) for values in rows[[k for k in keys if k in rows]].itertuples(
        index=False))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def manifest(table: pd.DataFrame, root: str) -> pd.DataFrame:
    """The split manifest as logged: paths relative to the data root where possible, one row per image."""
    out = table.copy()
    base = Path(root).resolve()

    def rel(p):
        if not isinstance(p, str) or not p:
            return ""
        resolved = Path(p).resolve()
        return str(resolved.relative_to(base)) if resolved.is_relative_to(base) else str(p)

    out["path"] = out["path"].map(rel)
    out["mask_path"] = out["mask_path"].map(rel)
    return out[[c for c in MANIFEST_COLUMNS if c in out]]
