"""Content hashes (exact copies) and perceptual hashes (near copies) of images."""

from __future__ import annotations

import hashlib
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from .images import read_rgb

HASH_SIZE = 8  # 64-bit perceptual hash


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def perceptual_hash(rgb: np.ndarray) -> str:
    """DCT perceptual hash of an RGB array as 16 hex digits; robust to re-encoding and small resizes."""
    return str(imagehash.phash(Image.fromarray(rgb), hash_size=HASH_SIZE))


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def hash_matrix(hashes: list[str]) -> np.ndarray:
    """Pairwise Hamming distances between hex hashes (n x n, int)."""
    bits = np.array([[int(c) for c in format(int(h, 16), f"0{HASH_SIZE * HASH_SIZE}b")] for h in hashes],
                    dtype=np.uint8)
    if len(bits) == 0:
        return np.zeros((0, 0), dtype=int)
    return (bits[:, None, :] != bits[None, :, :]).sum(axis=2)


def hash_image(path: str | Path) -> tuple[str, str]:
    """(sha256 of the file, perceptual hash of its pixels)."""
    return file_sha256(path), perceptual_hash(read_rgb(path))
