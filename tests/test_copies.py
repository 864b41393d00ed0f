"""Issue 11: near-copy detection with a second look: every real copy is grouped, no two different cells are."""

import io
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from bloodml.splitting.copies import Canvas, candidate_pairs, copy_similarity, fingerprint, hinted_similarity, orient
from bloodml.splitting.hashing import add_hashes, near_copies
from bloodml.splitting.splits import duplicate_groups
from clihelp import run_cli
from conftest import WBC, needs_wbc

# Different cells that a 64-bit perceptual hash alone called copies (distance <= 6), or nearly so.
DISTINCT_LOOKALIKES = [("079", "290"), ("142", "216"), ("031", "062"), ("062", "102"), ("100", "290")]
# The same cell saved twice by the dataset's makers (checked by eye).
TRUE_COPIES = [("112", "139"), ("157", "158"), ("166", "171"), ("167", "169"), ("071", "084"), ("021", "082"),
               ("060", "090"), ("030", "086"), ("019", "075")]


def _rgb(number: str) -> Image.Image:
    return Image.open(WBC / f"{number}.bmp").convert("RGB")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def _copies_of(image: Image.Image, rng: np.random.Generator) -> dict[str, Image.Image]:
    w, h = image.size
    cut = rng.uniform(0.05, 0.15)
    dx, dy = int(w * cut), int(h * cut)
    return {
        "recrop": image.crop([(dx, 0, w, h), (0, 0, w - dx, h), (0, dy, w, h), (0, 0, w, h - dy)][rng.integers(4)]),
        "jpeg": _jpeg(image, 60),
        "resize": image.resize((int(w * 0.7), int(h * 0.7)), Image.BILINEAR),
        "brighter": ImageEnhance.Brightness(image).enhance(1.1),
        "darker": ImageEnhance.Brightness(image).enhance(0.9),
        "flip": image.transpose(Image.FLIP_LEFT_RIGHT),
        "rot90": image.transpose(Image.ROTATE_90),
        "recrop_rot90_jpeg": _jpeg(image.crop((0, 0, w - dx, h)).transpose(Image.ROTATE_270), 75),
    }


def test_flips_and_rotations_are_the_hash_variants():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)
    plain = fingerprint(image)
    for orientation in range(8):
        assert fingerprint(orient(image, orientation))[0] == plain[orientation]
    turned = fingerprint(orient(image, 5))
    rows = candidate_pairs(np.stack([plain, turned, fingerprint(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8))]), 4)
    assert [tuple(r[:3]) for r in rows] == [(0, 1, 0)]  # the turned copy at distance 0, the other image not at all
    i, j, _, variant, swapped = rows[0]
    canvases = [Canvas.of(image), Canvas.of(orient(image, 5))]
    assert hinted_similarity(canvases[i], canvases[j], variant, swapped) == pytest.approx(1.0, abs=1e-3)


@needs_wbc
def test_synthetic_copies_are_grouped_and_distinct_cells_are_not(tmp_path):
    rng = np.random.default_rng(11)
    originals = ["010", "045", "073", "120", "200", "251"]  # neutrophils, lymphocytes, monocytes, eosinophils
    rows = []
    for number in originals:
        image = _rgb(number)
        image.save(tmp_path / f"{number}.png")
        rows.append({"path": str(tmp_path / f"{number}.png"), "origin": number, "kind": "original"})
        for kind, copy in _copies_of(image, rng).items():
            path = tmp_path / f"{number}_{kind}.png"
            copy.save(path)
            rows.append({"path": str(path), "origin": number, "kind": kind})
    for a, b in DISTINCT_LOOKALIKES:
        for number in (a, b):
            if not any(r["origin"] == number for r in rows):
                shutil.copy(WBC / f"{number}.bmp", tmp_path / f"{number}.bmp")
                rows.append({"path": str(tmp_path / f"{number}.bmp"), "origin": number, "kind": "original"})
    table = add_hashes(pd.DataFrame(rows), progress=False)
    groups = duplicate_groups(table, near_copies(table, near_distance=8))
    for origin, members in table.groupby("origin"):
        assert groups[members.index].nunique() == 1, f"copies of {origin} split: {list(members['kind'])}"
    assert groups.groupby(table["origin"]).first().nunique() == table["origin"].nunique()  # no two cells merged


def _second_look(a: str, b: str) -> float:
    """The similarity near_copies computes: the hash's best flip/crop hint, then the registered comparison."""
    images = [np.asarray(_rgb(a)), np.asarray(_rgb(b))]
    (row,) = candidate_pairs(np.stack([fingerprint(x) for x in images]), max_distance=64)
    return hinted_similarity(Canvas.of(images[0]), Canvas.of(images[1]), row[3], row[4])


@needs_wbc
def test_real_lookalikes_score_far_below_real_copies():
    distinct = [_second_look(a, b) for a, b in DISTINCT_LOOKALIKES]
    copies = [_second_look(a, b) for a, b in TRUE_COPIES[1:]]
    assert max(distinct) < 0.72 < 0.8 < min(copies), (distinct, copies)
    assert copy_similarity(np.asarray(_rgb("157")), np.asarray(_rgb("158"))) > 0.8  # the exhaustive look agrees


@needs_wbc
def test_inspect_lists_only_the_same_cells(capsys):
    code, out, err = run_cli(capsys, "data", "inspect", "--data", WBC)
    assert code == 0, err
    listed = {tuple(sorted(p.split("/")[-1][:3] for p in line.split(": ", 1)[1].split(" = ")))
              for line in out.splitlines() if line.strip().startswith("copies:")}
    conflicting = ("060", "090")  # one cell, labelled monocyte once and neutrophil once: left out, with a note
    assert listed == set(TRUE_COPIES) - {conflicting}, listed
    assert "left out copies of one image with different labels: 060.bmp (neutrophil), 090.bmp (monocyte)" in out


def test_indexed_candidate_search_equals_the_exhaustive_one_with_memory_linear_in_n():
    """The multi-index search finds exactly the pairs (and best variant) that comparing every pair finds, and its
    memory grows about linearly with the number of images (not with its square)."""
    import tracemalloc

    from bloodml.splitting.copies import candidate_pairs_exhaustive

    rng = np.random.default_rng(3)
    fingerprints = rng.integers(0, 2 ** 63, size=(900, 120), dtype=np.int64).astype(np.uint64)
    for k in range(80):  # planted pairs at distances 0-11, in both directions, some at the search's limit
        a, b = rng.choice(len(fingerprints), 2, replace=False)
        variant, bits = int(rng.integers(0, 120)), rng.choice(64, int(rng.integers(0, 12)), replace=False)
        flip = np.uint64(sum(1 << int(x) for x in bits))
        if k % 2:
            fingerprints[a, 0] = fingerprints[b, variant] ^ flip
        else:
            fingerprints[a, variant] = fingerprints[b, 0] ^ flip
    for distance in (0, 4, 8, 11):
        indexed, exhaustive = candidate_pairs(fingerprints, distance), candidate_pairs_exhaustive(fingerprints, distance)
        assert len(indexed) > 0 and np.array_equal(indexed, exhaustive), distance

    def peak(n: int) -> int:
        prints = rng.integers(0, 2 ** 63, size=(n, 120), dtype=np.int64).astype(np.uint64)
        tracemalloc.start()
        candidate_pairs(prints, 8, batch=100_000)  # a small batch, so the index dominates at these sizes
        used = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return used

    small, large = peak(1000), peak(4000)
    assert large < 6 * small  # 4x the images: about 4x the memory (the square would be 16x)
