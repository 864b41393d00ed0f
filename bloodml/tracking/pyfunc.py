"""MLflow's pyfunc models from code: the base class a served model derives from, loading one, logging one with its
signature and input example (then checking it loads, and tagging its hash), and what a run logged. The served
image model itself is serving's (:mod:`bloodml.serving.image_model`); its MLflow calls are these."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from ..errors import BloodmlError
from .model import directory_sha256
from .registry import model_uri, run_logged_models, source_run

PythonModel = mlflow.pyfunc.PythonModel
set_model = mlflow.models.set_model  # what a models-from-code entry file calls


def load_pyfunc(uri: str):
    """A logged pyfunc model, on the CPU."""
    return mlflow.pyfunc.load_model(uri, model_config={"device": "cpu"})


def pyfunc_metadata(model) -> dict:
    return model.metadata.metadata or {}


def logged_metadata(uri: str) -> dict:
    """A logged model's metadata, read without loading the model."""
    return mlflow.models.get_model_info(uri).metadata or {}


def bad_request(message: str) -> MlflowException:
    """What a served model raises for a bad request: HTTP 400 with the one-line reason; the server goes on."""
    return MlflowException.invalid_parameter_value(message)


def table_signature(inputs: list[tuple[str, str, bool]], outputs: list[tuple[str, str]]) -> ModelSignature:
    """A signature of columns: inputs as (type, name, required), outputs as (type, name)."""
    return ModelSignature(inputs=Schema([ColSpec(kind, name, required=required) for kind, name, required in inputs]),
                          outputs=Schema([ColSpec(kind, name) for kind, name in outputs]))


def log_code_model(name: str, entry: Path, artifacts: dict[str, str], signature: ModelSignature,
                   example: pd.DataFrame, requirements: list[str], metadata: dict, hash_tag: str) -> str:
    """Log a models-from-code pyfunc (loading it unpickles nothing) into the active run, download it back (MLflow
    checks that it loads and answers its example) and tag the run with its folder's hash. Returns its URI."""
    with tempfile.TemporaryDirectory() as tmp:
        info = mlflow.pyfunc.log_model(name=name, python_model=str(entry), artifacts=artifacts, signature=signature,
                                       input_example=example, pip_requirements=requirements, metadata=metadata)
        local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(Path(tmp) / "check"))
        mlflow.set_tag(hash_tag, directory_sha256(Path(local)))
    return info.model_uri


def logged_model_run(reference: str) -> tuple[str, set[str]]:
    """The run behind any model reference (a registry alias, a run ID, a run's model) and the names of what it
    logged (artifacts and logged models); one line when the reference names no run's model or is not found."""
    uri = model_uri(reference)
    try:
        run_id = source_run(uri)
        if run_id is None:
            raise BloodmlError(f"model '{reference}': not a run's model; pass models:/<name>@<alias>, "
                               f"models:/<name>/<version>, runs:/<run_id>/model or a run ID.")
        logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
        logged |= {m.name for m in run_logged_models(run_id)}
    except MlflowException as exc:
        raise BloodmlError(f"model '{reference}' not found ({str(exc).splitlines()[0][:160]}); check the name, "
                           f"alias or run ID and MLFLOW_TRACKING_URI.")
    return run_id, logged
