"""Per-epoch checkpoints: written atomically (temporary file + rename), read with ``weights_only=True`` so a
checkpoint file can never run code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import BloodmlError


def default_directory() -> Path:
    from ..cache.store import default_directory as features

    return features().parent / "checkpoints"


def checkpoint_path(run_id: str, directory: str | Path | None = None) -> Path:
    return Path(directory or default_directory()) / f"{run_id}.pt"


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    os.close(handle)
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)  # a kill leaves the previous complete checkpoint, never half of one
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def load_checkpoint(path: Path) -> dict:
    if not Path(path).is_file():
        raise BloodmlError(f"checkpoint {path} not found; the run finished, or was started on another machine "
                           f"(set BLOODML_CACHE to where its checkpoints are).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BloodmlError(f"checkpoint {path} is not a plain bloodml checkpoint ({type(exc).__name__}); it is "
                           f"refused (checkpoints never load pickled code). Delete it and train again.")
