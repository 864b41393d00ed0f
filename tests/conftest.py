"""Shared fixtures: a temporary MLflow store, synthetic datasets in each layout, the real data when present."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bloodml.cache.store import clear_memory

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
WBC = SHARED_DATA / "wbc-zheng2018"
ALLIDB2 = SHARED_DATA / "all-idb2"
TINY_BACKBONE = "test_efficientnet"  # timm's 99k-parameter test network: real training in seconds

needs_wbc = pytest.mark.skipif(not WBC.is_dir(), reason=f"real data not found at {WBC}")
needs_allidb2 = pytest.mark.skipif(not ALLIDB2.is_dir(), reason=f"real data not found at {ALLIDB2}")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test: its own working directory and SQLite MLflow store, never the repo's."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # the URI is process-global in MLflow: reset it for every test
    monkeypatch.setenv("BLOODML_CACHE", str(tmp_path / "cache"))  # never the user's feature cache
    clear_memory()  # nor features another test left in this process's memory
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("CI", os.environ.get("CI", "true"))
    yield
    while mlflow.active_run():
        mlflow.end_run()


COLOURS = {"alpha": (200, 60, 60), "beta": (60, 60, 200), "gamma": (60, 180, 60)}


def cell_image(label: str, index: int, size: int = 24, rng=None):
    """A synthetic 'cell': a disc whose colour says the class, on a noisy pale background, plus its grey mask."""
    rng = rng or np.random.default_rng(index)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size / 2 + rng.uniform(-2, 2), size / 2 + rng.uniform(-2, 2)
    r = np.hypot(yy - cy, xx - cx)
    image = rng.integers(200, 240, size=(size, size, 3)).astype(np.uint8)
    cell, nucleus = r < size * 0.35, r < size * 0.18
    colour = np.array(COLOURS[label]) + rng.integers(-20, 20, size=3)
    image[cell] = np.clip(colour, 0, 255)
    image[nucleus] = np.clip(colour // 2, 0, 255)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[cell] = 128
    mask[nucleus] = 255
    return image, mask


@pytest.fixture
def make_wbc(tmp_path):
    """Synthetic dataset in the wbc layout: labels CSV (unpadded IDs, CRLF) + NNN.bmp + NNN.png."""

    def build(per_class: int = 12, classes=("alpha", "beta"), name: str = "wbc_synth") -> Path:
        root = tmp_path / name
        root.mkdir()
        rows, number = ["image ID,class label"], 0
        for code, label in enumerate(classes, start=1):
            for i in range(per_class):
                number += 1
                image, mask = cell_image(label, number)
                Image.fromarray(image).save(root / f"{number:03d}.bmp")
                Image.fromarray(mask).save(root / f"{number:03d}.png")
                rows.append(f"{number},{code}")
        (root / "labels.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
        return root

    return build


@pytest.fixture
def make_folders(tmp_path):
    """Synthetic dataset in the folders layout, with a parallel masks folder."""

    def build(per_class: int = 12, classes=("alpha", "beta", "gamma"), name: str = "folders_synth") -> Path:
        root = tmp_path / name
        for label in classes:
            (root / label).mkdir(parents=True)
            (root / "masks" / label).mkdir(parents=True)
            for i in range(per_class):
                # a seed fixed by the class name and index (Python's hash() of a string changes with every
                # process, which made the images, and a borderline test, differ from run to run)
                image, mask = cell_image(label, zlib.crc32(f"{label}/{i}".encode()) % 10_000)
                Image.fromarray(image).save(root / label / f"cell{i}.png")
                Image.fromarray(mask).save(root / "masks" / label / f"cell{i}.png")
        return root

    return build


CLASSES = ("alpha", "beta", "gamma")


def new_instrument(folder: Path, per_class: int, start: int = 5000, size: int = 24, csv: str = "cells.csv",
                   labels: bool = True, textured: bool = False) -> Path:
    """Cells of the same classes as another instrument would show them: warmer light, a darker background."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in CLASSES:
        for i in range(per_class):
            seed = start + 100 * CLASSES.index(label) + i
            image, _ = cell_image(label, seed, size=size)
            if textured:  # each cell its own coarse texture, so distinct cells are not near copies of each other
                grain = np.random.default_rng(seed).integers(0, 255, (6, 6), dtype=np.uint8)
                grain = np.asarray(Image.fromarray(grain).resize((size, size), Image.BILINEAR), dtype=float)
                image = image * 0.6 + grain[..., None] * 0.4
            shifted = np.clip(image.astype(float) * [1.1, 0.9, 0.75], 0, 255).astype(np.uint8)
            name = f"{label}_{i}.png"
            Image.fromarray(shifted).save(folder / name)
            rows.append({"image": name, "label": label if labels else ""})
    pd.DataFrame(rows).to_csv(folder / csv, index=False)
    return folder / csv


def tiny_overrides(data: Path, **extra) -> dict:
    """Fast, real training settings for tests: tiny backbone and images, few epochs and views."""
    values = {"data": str(data), "backbone": TINY_BACKBONE, "pretrained": "false", "image_size": 32, "epochs": 3,
              "aug_views": 2, "batch_size": 8, "lr": 0.01, "near_duplicate_distance": -1, "min_class_count": 2}
    values.update({k: str(v) for k, v in extra.items()})
    return values
