"""Resampling protocols as pure functions: repeated stratified group k-fold (paired: every configuration gets the
same folds) and the classic single hold-out split. Copies and near-copies share a group and never straddle."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ..errors import BloodmlError
from ..splitting.splits import strata, validation_rows


@dataclass(frozen=True)
class Fold:
    repeat: int
    fold: int
    split: tuple[str, ...]  # per row of the table: "train", "val", "test" or "" (left out of this fold)
    held_out: str = ""  # leave-one-source-out: the source this fold tests on

    @property
    def name(self) -> str:
        return f"r{self.repeat}-{self.held_out}" if self.held_out else f"r{self.repeat}f{self.fold}"




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
    labels, groups = strata(table).to_numpy(), table["group"].to_numpy()
    for repeat in range(repeats):
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
        for fold, (train_rows, test_rows) in enumerate(splitter.split(np.zeros(len(table)), labels, groups)):
            val_rows = validation_rows(train_rows, table, val_fraction, validation_seed(seed, repeat, fold))
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
    val_rows = validation_rows(pool, table, val_fraction, seed)
    split = tuple("test" if part == "test" else "val" if i in val_rows else "train" for i, part in enumerate(fold.split))
    return Fold(fold.repeat, fold.fold, split)



def leave_one_source_out(table: pd.DataFrame, held_out: list[str], repeats: int, val_fraction: float,
                         seed: int) -> list[Fold]:
    """For each source in ``held_out`` and each repeat: test on every image of that source, train on the other
    sources (a stratified, group-aware validation share carved from them, anew per repeat). Test images of a class
    no training source has cannot be called right or wrong by the model: they are left out of that fold."""
    sources = list(dict.fromkeys(table["source"]))
    unknown = [s for s in held_out if s not in sources]
    if unknown or len(sources) < 2:
        raise BloodmlError(f"leave-one-source-out needs two or more sources and held-out sources among them "
                           f"({', '.join(sources)}); '{(unknown or sources)[0]}' does not fit. Pass data= as a data "
                           f"collection or a comma list.")
    result = []
    for repeat in range(repeats):
        for index, source in enumerate(held_out):
            is_test = (table["source"] == source).to_numpy()
            train_rows = np.flatnonzero(~is_test)
            trained_classes = set(table.loc[~is_test, "label"])
            val_rows = validation_rows(train_rows, table, val_fraction, validation_seed(seed, repeat, index))
            split = ["val" if i in val_rows else "train" for i in range(len(table))]
            for i in np.flatnonzero(is_test):
                split[i] = "test" if table["label"].iat[i] in trained_classes else ""
            result.append(Fold(repeat, index, tuple(split), source))
    return result
