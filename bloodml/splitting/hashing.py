"""Hashing the files of a dataset: content hashes (exact copies) and near-copy detection (see :mod:`.copies`).

This module reads the files; :mod:`.copies` holds the pure image arithmetic.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..errors import BloodmlError
from ..data.checksums import file_sha256
from .copies import COPY_SIMILARITY, Canvas, candidate_pairs, fingerprint, hash_hex, hinted_similarity, \
    similarity_bar as _bar
from ..data.images import files_error, read_rgb


# Work already done in this process, by file content (studies, tuning and tests look at the same files again).
_FINGERPRINTS: dict[str, np.ndarray] = {}
_SIMILARITIES: dict[tuple, float] = {}
_MEMO_LIMIT = 200_000


def _remember(memo: dict, key, value):
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value
    return value


def add_hashes(table: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """Columns ``sha256`` (file bytes), ``phash`` (64-bit perceptual hash, hex) and ``fingerprint`` (the hashes of
    every flip/rotation and crop, for the near-copy search; not written to manifests)."""
    sha, prints, unreadable = [], [], []
    for path in tqdm(table["path"], desc="hashing images", disable=not progress, leave=False):
        digest = file_sha256(path)
        known = _FINGERPRINTS.get(digest)
        if known is None:
            try:
                known = _remember(_FINGERPRINTS, digest, fingerprint(read_rgb(path)))
            except BloodmlError as exc:  # every unreadable file is named at once, not one per attempt
                unreadable.append(str(exc))
                continue
        sha.append(digest)
        prints.append(known)
    if unreadable:
        raise BloodmlError(files_error(unreadable, "images cannot be read",
                                       "replace them or remove them from the dataset"))
    return table.assign(sha256=sha, phash=[hash_hex(p[0]) for p in prints], fingerprint=prints)


def near_copies(table: pd.DataFrame, near_distance: int, similarity: float = COPY_SIMILARITY,
                progress: bool = False) -> list[tuple[int, int, float]]:
    """(i, j, similarity) by position in ``table`` (with :func:`add_hashes` columns) for every pair whose hashes
    are within ``near_distance`` bits (in any flip/rotation or crop) and whose pixels pass the second look.
    Exact copies (same bytes) need no look: they are grouped by ``sha256``. ``near_distance`` < 0: none."""
    if near_distance < 0 or len(table) < 2:
        return []
    fingerprints = np.stack(list(table["fingerprint"]))
    candidates = candidate_pairs(fingerprints, near_distance)
    sha = table["sha256"].to_numpy()
    candidates = candidates[sha[candidates[:, 0]] != sha[candidates[:, 1]]] if len(candidates) else candidates
    paths = list(table["path"])
    canvas = functools.lru_cache(maxsize=4096)(lambda i: Canvas.of(read_rgb(paths[i])))
    confirmed = []
    for row in tqdm(candidates, desc="checking near copies", disable=not progress, leave=False):
        i, j, _, variant, swapped = (int(v) for v in row)
        key = (sha[i], sha[j], variant, swapped)
        score = _SIMILARITIES.get(key)
        if score is None:
            score = _remember(_SIMILARITIES, key, hinted_similarity(canvas(i), canvas(j), variant, swapped))
        if score >= similarity and score >= _bar(similarity, canvas(i), canvas(j)):
            confirmed.append((i, j, score))
    return confirmed
