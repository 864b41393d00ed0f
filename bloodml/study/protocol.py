"""Resampling protocols as pure functions: repeated stratified group k-fold (paired: every configuration gets the
same folds) and the classic single hold-out split. Copies and near-copies share a group and never straddle."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from ..errors import BloodmlError


@dataclass(frozen=True)
class Fold:
    repeat: int
    fold: int
    split: tuple[str, ...]  # per row of the table: "train", "val" or "test"

    @property
    def name(self) -> str:
        return f"r{self.repeat}f{self.fold}"


def _val_within(train_rows: np.ndarray, table: pd.DataFrame, val_fraction: float, seed: int) -> set[int]:
    """A stratified, group-aware validation split inside a training fold (for early stopping and checkpoints)."""
    groups = table.iloc[train_rows].groupby("group")["label"].first()
    try:
        _, val_groups = train_test_split(groups.index.to_numpy(), test_size=val_fraction,
                                         stratify=groups.to_numpy(), random_state=seed)
    except ValueError:
        _, val_groups = train_test_split(groups.index.to_numpy(), test_size=val_fraction, random_state=seed)
    chosen = set(val_groups)
    return {int(i) for i in train_rows if table.iloc[i]["group"] in chosen}


def validation_seed(seed: int, repeat: int, fold: int) -> int:
    """The seed of the validation split inside fold ``fold`` of repeat ``repeat``."""
    return seed + 1000 * repeat + fold


def repeated_group_kfold(table: pd.DataFrame, folds: int, repeats: int, val_fraction: float, seed: int) -> list[Fold]:
    """``repeats`` x ``folds`` splits; each image is in the test part exactly once per repeat."""
    counts = table.groupby("group")["label"].first().value_counts()
    if counts.min() < folds:
        raise BloodmlError(f"class '{counts.idxmin()}' has {counts.min()} independent images, fewer than folds={folds}; "
                           f"lower folds or drop the class with min_class_count.")
    result = []
    labels, groups = table["label"].to_numpy(), table["group"].to_numpy()
    for repeat in range(repeats):
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
        for fold, (train_rows, test_rows) in enumerate(splitter.split(np.zeros(len(table)), labels, groups)):
            val_rows = _val_within(train_rows, table, val_fraction, validation_seed(seed, repeat, fold))
            split = ["train"] * len(table)
            for i in test_rows:
                split[i] = "test"
            for i in val_rows:
                split[i] = "val"
            result.append(Fold(repeat, fold, tuple(split)))
    return result


def with_validation_share(fold: Fold, table: pd.DataFrame, val_fraction: float, seed: int) -> Fold:
    """The same fold with its validation part carved anew, at ``val_fraction``, from its training and validation
    rows (stratified and group-aware, as the protocol carves it). The test part is untouched, so configurations
    that differ only in their validation share are still scored on the same images and stay paired. At the
    protocol's own share and seed this gives back the protocol's split."""
    pool = np.array([i for i, part in enumerate(fold.split) if part != "test"])
    val_rows = _val_within(pool, table, val_fraction, seed)
    split = tuple("test" if part == "test" else "val" if i in val_rows else "train" for i, part in enumerate(fold.split))
    return Fold(fold.repeat, fold.fold, split)

