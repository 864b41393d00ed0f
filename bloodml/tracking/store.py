"""Which MLflow store to talk to: ``MLFLOW_TRACKING_URI`` when set, else a SQLite file in the working directory."""

from __future__ import annotations

import os

import mlflow

DEFAULT_URI = "sqlite:///mlflow.db"


def configure_tracking() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    mlflow.set_tracking_uri(uri)
    return uri


def ui_hint(uri: str) -> str:
    if uri.startswith("http"):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)"
