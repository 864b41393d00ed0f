"""Where cached features live: a process-wide memory map and safetensors shards on disk.

One shard per (model key, view key) holds a (D,) tensor per image key. Shards are written atomically (temporary
file + rename) and carry a SHA-256 of their contents; a shard that fails to load or to verify is deleted and
rebuilt, never used. Loading safetensors runs no code.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..runtime import cache_root

_MEMORY: dict[tuple[str, str], dict[str, torch.Tensor]] = {}


def default_directory() -> Path:
    return cache_root() / "features"


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


class FeatureStore:
    def __init__(self, directory: Path | None = None, use_disk: bool = True, use_memory: bool = True):
        self.directory = Path(directory) if directory else default_directory()
        self.use_disk, self.use_memory = use_disk, use_memory
        self.hits = self.misses = 0

    def shard_path(self, model: str, view: str) -> Path:
        return self.directory / model[:2] / f"{model}-{view}.safetensors"

    def _read(self, path: Path) -> dict[str, torch.Tensor]:
        if not path.is_file():
            return {}
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                expected = (handle.metadata() or {}).get("sha256")
            if expected != _checksum(tensors):
                raise ValueError("checksum mismatch")
            return tensors
        except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
            warnings.warn(f"feature cache {path} is corrupt ({exc}); rebuilding it", stacklevel=2)
            path.unlink(missing_ok=True)
            return {}

    def _write(self, path: Path, tensors: dict[str, torch.Tensor]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        os.close(handle)
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, temporary, metadata={"sha256": _checksum(tensors)})
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)

    def features(self, model: str, view: str, keys: list[str],
                 compute: Callable[[np.ndarray], torch.Tensor]) -> torch.Tensor:
        """Features for ``keys`` in order; ``compute(indices)`` is called once for the ones not cached."""
        known: dict[str, torch.Tensor] = dict(_MEMORY.get((model, view), {})) if self.use_memory else {}
        if self.use_disk and any(k not in known for k in keys):
            known.update(self._read(self.shard_path(model, view)))
        missing = np.array([i for i, k in enumerate(keys) if k not in known], dtype=np.int64)
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if len(missing):
            computed = compute(missing)
            for i, row in zip(missing, computed):
                known[keys[i]] = row.detach().clone()
            if self.use_disk:
                on_disk = self._read(self.shard_path(model, view))
                on_disk.update(known)  # merge with what other runs wrote meanwhile
                self._write(self.shard_path(model, view), on_disk)
        if self.use_memory:
            _MEMORY.setdefault((model, view), {}).update({k: known[k] for k in keys})
        return torch.stack([known[k] for k in keys]) if keys else torch.zeros(0)


def clear_memory() -> None:
    _MEMORY.clear()
