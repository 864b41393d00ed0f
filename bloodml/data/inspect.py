"""`bloodml data inspect`: what a dataset holds, before any training."""

from __future__ import annotations

from collections import Counter

from PIL import Image

from ..config import RunConfig
from .prepare import add_hashes, read_labelled
from .splits import duplicate_groups


def inspect_dataset(config: RunConfig) -> list[str]:
    table, fmt, root, notes = read_labelled(config)
    lines = [f"data: {root} (format {fmt}), {len(table)} images"]
    lines += [f"note: {n}" for n in notes]
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
    hashed = add_hashes(table, progress=False)
    exact = int(hashed["sha256"].duplicated().sum())
    groups = duplicate_groups(hashed, config.near_duplicate_distance)
    near = int((groups.value_counts() > 1).sum())
    lines.append(f"duplicates: {exact} exact copies; {near} group(s) of copies/near-copies "
                 f"(perceptual-hash distance <= {config.near_duplicate_distance}), kept together when splitting")
    for group, members in hashed.groupby(groups):
        if len(members) > 1:
            lines.append("  copies: " + " = ".join(str(p) for p in members["path"]))
    return lines
