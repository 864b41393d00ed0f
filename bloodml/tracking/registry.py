"""The MLflow Model Registry: resolve model references, register versions, move aliases."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager

import mlflow
from mlflow.exceptions import MlflowException

from ..errors import BloodmlError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def model_uri(reference: str, artifact: str = "model") -> str:
    """``models:/name@alias``, ``models:/name/3``, ``runs:/id/model``, a bare run ID (its ``artifact``: model or
    segmenter), or a local model folder."""
    if RUN_ID.match(reference):
        return f"runs:/{reference}/{artifact}"
    return reference


def source_run(uri: str) -> str | None:
    """The run that logged the model at ``uri`` (None for a local folder or an unversioned reference)."""
    client = mlflow.MlflowClient()
    if uri.startswith("runs:/"):
        return uri.split("/")[1]
    if uri.startswith("models:/"):
        name = uri[len("models:/"):]
        if "@" in name:
            model_name, alias = name.split("@", 1)
            return client.get_model_version_by_alias(model_name, alias).run_id
        model_name, _, version = name.partition("/")
        return client.get_model_version(model_name, version).run_id if version.isdigit() else None
    return None


def alias_version(name: str, alias: str):
    """The model version ``alias`` points at, or None (no such model or alias)."""
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


class RegistryPermissionError(BloodmlError):
    """The tracking server's authentication refused a registry change to this user (HTTP 403)."""


@contextmanager
def _permitted(name: str, what: str):
    try:
        yield
    except MlflowException as exc:
        if exc.error_code != "PERMISSION_DENIED":
            raise
        user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "this user"
        raise RegistryPermissionError(f"{user} may not {what} on registered model '{name}' (the tracking server "
                                      f"needs EDIT on it)") from None


def run_logged_models(run_id: str) -> list:
    """The models a run logged (searched in the run's own experiment: by default MLflow looks only in the active
    one)."""
    experiment = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    return mlflow.search_logged_models(experiment_ids=[experiment], filter_string=f"source_run_id = '{run_id}'",
                                       output_format="list")


def logged_model_uri(run_id: str, artifact: str = "model") -> str:
    """``models:/<model_id>`` of the model named ``artifact`` that the run logged (MLflow 3 keeps logged models
    beside the run's artifacts; registering ``runs:/<run_id>/model`` works but warns that the path is empty), else
    ``runs:/<run_id>/<artifact>``."""
    logged = [m for m in run_logged_models(run_id) if m.name == artifact]
    return max(logged, key=lambda m: m.creation_timestamp).model_uri if logged else f"runs:/{run_id}/{artifact}"


def register_version(run_id: str, name: str, tags: dict | None = None, artifact: str = "model") -> str:
    """Register the run's model ``artifact`` as a new version of ``name``. Returns the version."""
    with _permitted(name, "register a version"):
        version = str(mlflow.register_model(logged_model_uri(run_id, artifact), name).version)
    for key, value in (tags or {}).items():
        set_version_tag(name, version, key, value)
    return version


def set_version_tag(name: str, version: str, key: str, value) -> None:
    with _permitted(name, "tag a version"):
        mlflow.MlflowClient().set_model_version_tag(name, version, key, str(value))


def set_alias(name: str, alias: str, version: str) -> None:
    with _permitted(name, f"move @{alias}"):
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version)


def register(run_id: str, name: str, alias: str = "champion", artifact: str = "model") -> str:
    """Register a run's model under ``name`` and point ``alias`` at the new version. Returns the version."""
    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise BloodmlError(f"run {run_id} not found in {mlflow.get_tracking_uri()}; check the run ID and "
                           f"MLFLOW_TRACKING_URI.")
    version = register_version(run_id, name, artifact=artifact)
    if alias:
        set_alias(name, alias, version)
    return version
