"""Is this Python bloodml's? `mlflow run` without the virtual environment on PATH starts the system's `python`,
which finds the bloodml folder (the working directory) but none of its packages; say so in one line, with the fix,
before any of them is imported. Standard library only."""

from __future__ import annotations

import importlib.util
import os
import sys

NEEDED = ("click", "yaml", "numpy", "torch", "mlflow")


def missing_packages() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def require_packages() -> None:
    """Exit with one line naming this Python and how to point `mlflow run` (or a shell) at bloodml's
    environment when a package bloodml needs is not importable."""
    missing = missing_packages()
    if not missing:
        return
    venv = os.path.join(os.getcwd(), ".venv", "bin")
    sys.stderr.write(f"error: {sys.executable} cannot import {', '.join(missing)}: this is not bloodml's Python. "
                     f"Run with its environment first on PATH: `source .venv/bin/activate` (or PATH={venv}:$PATH "
                     f"mlflow run ...); `make install` creates it.\n")
    raise SystemExit(2)
