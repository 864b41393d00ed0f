"""Label handling: human class names, unknown values, rare classes, binary (positive vs rest) grouping."""

from __future__ import annotations

import pandas as pd

from ..errors import BloodmlError
from .readers import WBC_CLASS_NAMES


def parse_class_names(text: str, option: str = "class_names",
                      example: str = "1=neutrophil,2=lymphocyte") -> dict[str, str]:
    """``"1=neutrophil,2=lymphocyte"`` -> {"1": "neutrophil", "2": "lymphocyte"}; errors name ``option`` (the
    parameter the text came from) and show ``example``."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "=" not in item:
            raise BloodmlError(f"{option} entry '{item}' has no '='; write it like '{example}'.")
        code, name = (s.strip() for s in item.split("=", 1))
        if not code or not name:
            raise BloodmlError(f"{option} entry '{item}' is incomplete; write it like '{example.split(',')[0]}'.")
        mapping[code] = name
    return mapping


def default_class_names(fmt: str) -> dict[str, str]:
    return dict(WBC_CLASS_NAMES) if fmt == "wbc" else {}


def apply_class_names(table: pd.DataFrame, mapping: dict[str, str]) -> pd.DataFrame:
    """Rename label codes; with a mapping, every label must be one of its codes (or already a name)."""
    if not mapping:
        return table
    known = set(mapping) | set(mapping.values())
    unknown = table.loc[~table["label"].isin(known)]
    if len(unknown):
        row = unknown.iloc[0]
        raise BloodmlError(
            f"{row['origin']}: unknown label '{row['label']}' (known: {', '.join(sorted(mapping))}); "
            f"fix the row or add it to class_names, e.g. class_names='{row['label']}=<name>,...'."
        )
    return table.assign(label=table["label"].map(lambda v: mapping.get(v, v)))


def merge_case_variants(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Labels that differ only in case ('Neutrophil', 'neutrophil') are one class under the most frequent spelling
    (ties: the first in sorted order); one note per merged class says so."""
    counts = table["label"].value_counts()
    spelling, notes = {}, []
    for _, variants in counts.groupby(counts.index.map(str.casefold)):
        if len(variants) < 2:
            continue
        chosen = sorted(variants.items(), key=lambda item: (-item[1], item[0]))[0][0]
        spelling.update({variant: chosen for variant in variants.index})
        notes.append(f"labels differing only in case taken as one class '{chosen}': "
                     + ", ".join(f"'{name}' ({n})" for name, n in sorted(variants.items())))
    if not spelling:
        return table, []
    return table.assign(label=table["label"].map(lambda v: spelling.get(v, v))), notes


def group_binary(table: pd.DataFrame, positive: list[str], negative_name: str = "") -> pd.DataFrame:
    """Positive classes vs the rest (e.g. lymphoblast vs normal): labels become '<positive>' / 'not_<positive>'."""
    positive = [p.strip() for p in positive if p.strip()]
    if not positive:
        return table
    labels = set(table["label"])
    missing = [p for p in positive if p not in labels]
    if missing:
        raise BloodmlError(f"positive_classes '{', '.join(missing)}' not found among labels "
                           f"({', '.join(sorted(labels))}); use the class names as the data spells them.")
    pos_name = "+".join(positive)
    neg_name = negative_name or f"not_{pos_name}"
    if labels <= set(positive):
        raise BloodmlError(f"positive_classes covers every label ({', '.join(sorted(labels))}); "
                           f"leave at least one class as the negative side.")
    return table.assign(label=table["label"].map(lambda v: pos_name if v in positive else neg_name))


def drop_rare_classes(table: pd.DataFrame, min_count: int) -> tuple[pd.DataFrame, list[str]]:
    """Drop classes with fewer than ``min_count`` images; returns the table and one warning per dropped class."""
    counts = table["label"].value_counts()
    rare = counts[counts < min_count]
    notes = [f"class '{name}' has {n} image(s), fewer than min_class_count={min_count}: dropped"
             for name, n in rare.items()]
    kept = table.loc[~table["label"].isin(rare.index)].reset_index(drop=True)
    if kept["label"].nunique() < 2:
        listed = ", ".join(f"{name} {int(n)}" for name, n in counts.items())
        if len(counts) < 2:
            raise BloodmlError(f"only one class in the labels ({listed} images); a classifier needs two or more: "
                               f"check label_column, or add the other classes' images.")
        raise BloodmlError(f"fewer than two classes left after dropping classes under {min_count} images "
                           f"(counts: {listed}); lower min_class_count or add images.")
    return kept, notes


def class_order(table: pd.DataFrame) -> list[str]:
    """A stable class order: sorted names (so the same data gives the same output layout)."""
    return sorted(table["label"].unique())
