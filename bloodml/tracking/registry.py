"""The MLflow Model Registry: register a run's model under a name with an alias, and resolve model references."""

from __future__ import annotations

import re

import mlflow
from mlflow.exceptions import MlflowException

from ..errors import BloodmlError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def model_uri(reference: str) -> str:
    """``models:/name@alias``, ``models:/name/3``, ``runs:/id/model``, a bare run ID, or a local model folder."""
    if RUN_ID.match(reference):
        return f"runs:/{reference}/model"
    return reference


def register(run_id: str, name: str, alias: str = "champion") -> str:
    """Register ``runs:/<run_id>/model`` as a new version of ``name`` and point ``alias`` at it. Returns the version."""
    client = mlflow.MlflowClient()
    try:
        client.get_run(run_id)
    except MlflowException:
        raise BloodmlError(f"run {run_id} not found in {mlflow.get_tracking_uri()}; check the run ID and "
                           f"MLFLOW_TRACKING_URI.")
    version = mlflow.register_model(f"runs:/{run_id}/model", name)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)
