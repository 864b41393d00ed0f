"""Scale benchmark: a synthetic dataset of many small images with planted copies, loaded, hashed, copy-grouped
and split as a training run does, with the time of each step and the peak memory.

    python benchmarks/scale.py [--images 20000] [--copies 300] [--out benchmarks/results/scale.json]

Images are 32x32 textures (distinct by construction), each of 40 patients; copies are planted three ways: the
same bytes, a flipped or rotated copy, and a JPEG re-encoding. Every planted copy must land in its original's
group (the split never separates them). Peak memory is the process's maximum resident set size. Then the hash
search alone, indexed and exhaustive, on the first ``--compare`` images' hashes: their time ratio, same pairs.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bloodml.config import build_config
from bloodml.splitting.copies import candidate_pairs, candidate_pairs_exhaustive
from bloodml.splitting.prepare import prepare


def texture(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A smooth random texture: distinct images hash far apart."""
    small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    return np.asarray(image)


def make_dataset(folder: Path, images: int, copies: int, seed: int = 0) -> tuple[Path, list[tuple[str, str]]]:
    """``images`` files under ``folder`` with a cells.csv manifest (image, label, patient); returns the manifest and
    the planted (original, copy) pairs. ``copies`` of each kind: exact, flipped/rotated, JPEG re-encoded."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    originals = images - 3 * copies
    rows, planted = [], []
    for i in range(originals):
        name = f"images/{i:06d}.png"
        Image.fromarray(texture(rng)).save(folder / name)
        patient = i % 40
        rows.append((name, "tumoral" if patient < 28 else "reactive", f"P{patient:02d}"))
    for kind in ("exact", "turned", "jpeg"):
        for k in range(copies):
            source = int(rng.integers(0, originals))
            original, label, patient = rows[source]
            pixels = np.asarray(Image.open(folder / original))
            name = f"images/{kind}_{k:05d}" + (".jpg" if kind == "jpeg" else ".png")
            if kind == "exact":
                (folder / name).write_bytes((folder / original).read_bytes())
            elif kind == "turned":
                Image.fromarray(np.ascontiguousarray(np.rot90(pixels, int(rng.integers(1, 4))))).save(folder / name)
            else:
                Image.fromarray(pixels).save(folder / name, quality=90)
            rows.append((name, label, patient))
            planted.append((original, name))
    manifest = folder / "cells.csv"
    pd.DataFrame(rows, columns=["image", "diagnosis", "patient"]).to_csv(manifest, index=False)
    return manifest, planted


def compare_searches(fingerprints: np.ndarray, distance: int) -> dict:
    """The candidate search on the same hashes, indexed and exhaustive: seconds, their ratio, same pairs."""
    started = time.perf_counter()
    indexed = candidate_pairs(fingerprints, distance)
    middle = time.perf_counter()
    exhaustive = candidate_pairs_exhaustive(fingerprints, distance)
    done = time.perf_counter()
    return {"search_images": len(fingerprints), "search_indexed_seconds": round(middle - started, 2),
            "search_exhaustive_seconds": round(done - middle, 2),
            "search_speedup": round((done - middle) / max(middle - started, 1e-9), 1),
            "search_same_pairs": bool(np.array_equal(indexed, exhaustive))}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--copies", type=int, default=300, help="planted copies of each kind")
    parser.add_argument("--compare", type=int, default=4000,
                        help="images on which the indexed and the exhaustive copy search are timed side by side")
    parser.add_argument("--out", default="benchmarks/results/scale.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "synthetic"
        started = time.perf_counter()
        manifest, planted = make_dataset(folder, args.images, args.copies)
        made = time.perf_counter() - started
        print(f"made {args.images} images ({3 * args.copies} planted copies) in {made:.1f}s", flush=True)
        config = build_config(None, {"data": str(manifest), "label_column": "diagnosis", "group_column": "patient",
                                     "min_class_count": 2})
        memory_before = peak_mib()
        started = time.perf_counter()
        data = prepare(config, progress=False)
        seconds = time.perf_counter() - started
        table = data.table.assign(name=data.table["path"].map(lambda p: str(Path(p).relative_to(folder))))
        group = dict(zip(table["name"], table["group"]))
        found = sum(group[a] == group[b] for a, b in planted)
        search = compare_searches(np.stack(list(data.table["fingerprint"][:args.compare])), config.near_duplicate_distance)
    result = {"images": args.images, "planted_copies": len(planted), "planted_copies_grouped": found,
              "near_copy_pairs_confirmed": len(data.copies), "prepare_seconds": round(seconds, 1),
              "peak_rss_mib": round(peak_mib()), "peak_rss_mib_before_prepare": round(memory_before),
              "splits": data.table["split"].value_counts().to_dict(), **search, "python": sys.version.split()[0],
              "machine": platform.processor() or platform.machine()}
    print(json.dumps(result, indent=2), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if found == len(planted) else 1


if __name__ == "__main__":
    sys.exit(main())
