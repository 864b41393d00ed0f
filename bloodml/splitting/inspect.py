"""`bloodml data inspect`: what a dataset holds, before any training (the same pipeline as a run, up to the
split)."""

from __future__ import annotations

from collections import Counter

from PIL import Image

from ..config import RunConfig
from .prepare import grouped_data


def inspect_dataset(config: RunConfig) -> list[str]:
    data = grouped_data(config, progress=False, mask_mode="none")
    table = data.table
    lines = [f"data: {data.root} (format {data.format}), {len(table)} images"]
    lines += [f"note: {n}" for n in data.notes]
    for label, count in table["label"].value_counts().sort_index().items():
        with_masks = int(table.loc[table["label"] == label, "mask_path"].notna().sum())
        lines.append(f"  class {label}: {count} images, {with_masks} with masks")
    sizes = Counter()
    for path in table["path"]:
        with Image.open(path) as image:
            sizes[image.size] += 1
    widths = [w for (w, _), n in sizes.items() for _ in range(n)]
    heights = [h for (_, h), n in sizes.items() for _ in range(n)]
    lines.append(f"image sizes: width {min(widths)}-{max(widths)}, height {min(heights)}-{max(heights)}; "
                 f"most common {', '.join(f'{w}x{h} ({n})' for (w, h), n in sizes.most_common(3))}")
    lines.append(f"masks found: {int(table['mask_path'].notna().sum())} of {len(table)}")
    exact = int(table["sha256"].duplicated().sum())
    similarity = {frozenset((int(i), int(j))): s for i, j, s in data.copies}
    groups = [members for _, members in table.groupby("group") if len(members) > 1 and
              (members["sha256"].duplicated().any() or any(frozenset(p) in similarity for p in _pairs(members.index)))]
    lines.append(f"duplicates: {exact} exact copies; {len(groups)} group(s) of copies/near-copies (hash distance <= "
                 f"{config.near_duplicate_distance} in any flip/rotation or crop, confirmed by a fine-structure "
                 f"similarity >= {config.copy_similarity}), kept together when splitting")
    for members in groups:
        scores = [similarity[k] for k in map(frozenset, _pairs(members.index)) if k in similarity]
        extra = f"  (similarity {min(scores):.2f})" if scores else "  (same bytes)"
        lines.append("  copies: " + " = ".join(str(p) for p in members["path"]) + extra)
    return lines


def _pairs(index):
    items = list(index)
    return [(a, b) for k, a in enumerate(items) for b in items[k + 1:]]
