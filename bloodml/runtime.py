"""Process-level settings: CPU threads, seeds, progress bars only on a terminal."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def configure(threads: int, seed: int) -> int:
    """Set torch's thread count (0: all available cores) and every RNG seed. Returns the thread count."""
    n = threads or available_cores()
    torch.set_num_threads(n)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return n


def show_progress() -> bool:
    """tqdm bars on an interactive terminal; plain lines in logs and CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def say(message: str) -> None:
    print(message, flush=True)


def cache_root() -> Path:
    """bloodml's cache folder: $BLOODML_CACHE, else $XDG_CACHE_HOME/bloodml, else ~/.cache/bloodml."""
    root = os.environ.get("BLOODML_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bloodml")
    return Path(root)
