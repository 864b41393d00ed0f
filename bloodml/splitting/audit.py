"""Leakage audit: do any images appear (as the same path, the same bytes, or a near copy) in two splits?"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import pandas as pd

from ..errors import BloodmlError
from .copies import COPY_SIMILARITY
from .hashing import add_hashes, near_copies
from ..data.images import is_image_file


@dataclass(frozen=True)
class Leak:
    kind: str  # "path", "content" or "near-duplicate"
    split_a: str
    path_a: str
    split_b: str
    path_b: str
    similarity: float = 1.0

    def line(self) -> str:
        extra = f" (similarity {self.similarity:.2f})" if self.kind == "near-duplicate" else ""
        return f"{self.kind}: {self.split_a}/{self.path_a} <-> {self.split_b}/{self.path_b}{extra}"


def _with_hashes(table: pd.DataFrame) -> pd.DataFrame:
    if "fingerprint" in table and "sha256" in table:
        return table
    return add_hashes(table.drop(columns=["sha256", "phash"], errors="ignore"), progress=False)


def find_leaks(table: pd.DataFrame, near_distance: int = 8, similarity: float = COPY_SIMILARITY,
               copies: list | None = None) -> list[Leak]:
    """Every cross-split pair sharing a resolved path, the same bytes, or confirmed as a near copy.

    ``table`` needs columns path and split (hashes are computed from the files when absent); ``copies`` are the
    near-copy pairs (i, j, similarity) by position when the caller found them already."""
    table = table.reset_index(drop=True)
    leaks: list[Leak] = []
    resolved = table["path"].map(lambda p: str(Path(p).resolve()))
    hashed = _with_hashes(table)
    for key, kind in ((resolved, "path"), (hashed["sha256"], "content")):
        for rows in table.groupby(key).groups.values():
            members = table.loc[rows]
            for (i, a), (j, b) in combinations(members.iterrows(), 2):
                if a["split"] != b["split"]:
                    leaks.append(Leak(kind, a["split"], a["path"], b["split"], b["path"]))
    if copies is None:
        copies = near_copies(hashed, near_distance, similarity)
    already = {(l.path_a, l.path_b) for l in leaks} | {(l.path_b, l.path_a) for l in leaks}
    for i, j, score in copies:
        a, b = table.iloc[int(i)], table.iloc[int(j)]
        if a["split"] != b["split"] and (a["path"], b["path"]) not in already:
            leaks.append(Leak("near-duplicate", a["split"], a["path"], b["split"], b["path"], float(score)))
    return leaks


def table_from_manifest(manifest_csv: Path, root: Path | None = None) -> pd.DataFrame:
    manifest_csv = Path(manifest_csv)
    if not manifest_csv.is_file():
        raise BloodmlError(f"{manifest_csv}: manifest not found; pass the split_manifest.csv a run logged.")
    table = pd.read_csv(manifest_csv, dtype=str, keep_default_na=False)
    for column in ("path", "split"):
        if column not in table:
            raise BloodmlError(f"{manifest_csv}: no '{column}' column; pass a bloodml split manifest "
                               f"or use --train/--val/--test folders.")
    base = Path(root) if root else manifest_csv.parent
    table["path"] = table["path"].map(lambda p: str(p if Path(p).is_absolute() else base / p))
    missing = [p for p in table["path"] if not Path(p).is_file()]
    if missing:
        raise BloodmlError(f"{missing[0]}: listed in the manifest but not found (the audit compares the images "
                           f"themselves); pass --root <data folder>.")
    return table


def table_from_folders(folders: dict[str, Path]) -> pd.DataFrame:
    rows = []
    for split, folder in folders.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise BloodmlError(f"--{split} {folder}: not a folder; pass the folder holding the {split} images.")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise BloodmlError(f"--{split} {folder}: no images found at any depth; check the path.")
        rows += [{"path": str(p), "split": split} for p in files]
    return pd.DataFrame(rows)
