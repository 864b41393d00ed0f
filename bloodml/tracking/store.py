"""Which MLflow store to talk to: ``MLFLOW_TRACKING_URI`` when set, else a SQLite file in the working directory."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sys
from pathlib import Path

import mlflow

from ..runtime import show_progress

DEFAULT_URI = "sqlite:///mlflow.db"


def configure_tracking() -> str:
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # schema set-up chatter, not the user's
        logging.getLogger(name).setLevel(logging.WARNING)
    if not show_progress():  # logs and CI get plain lines, never MLflow's artefact progress bars
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        _initialise_sqlite_once(uri)
    return uri


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def _initialise_sqlite_once(uri: str) -> None:
    """Several processes opening a new SQLite store at once race to create its tables; a file lock makes the
    first one create them while the others wait."""
    path = uri[len("sqlite:///"):]
    lock_path = f"{path}.lock" if path and path != ":memory:" else None
    if not lock_path:
        return
    directory = os.path.dirname(os.path.abspath(lock_path))
    os.makedirs(directory, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            mlflow.MlflowClient().search_experiments(max_results=1)  # creates/migrates the schema
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ui_hint(uri: str) -> str:
    """How to look at the runs, as a command that runs as printed from this shell: the `mlflow` beside this Python
    (a virtual environment's, which need not be on PATH)."""
    if uri.startswith("http"):
        return f"open {uri} in a browser"
    return f"{mlflow_command()} ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)"


def mlflow_command() -> str:
    """``mlflow`` when the one on PATH is this Python's, else the path of this Python's (relative to the working
    directory when under it, as `.venv/bin/mlflow`)."""
    mine = Path(sys.executable).parent / "mlflow"
    found = shutil.which("mlflow")
    if not mine.exists() or (found and Path(found).resolve() == mine.resolve()):
        return "mlflow"
    try:
        return str(mine.relative_to(Path.cwd()))
    except ValueError:
        return str(mine)
