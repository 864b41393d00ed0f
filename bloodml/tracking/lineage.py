"""A model made from another (bloodml adapt): what the parent run logged, read back, and the child's lineage
recorded: tags naming the parent, and the parent's logged model as an input of the child run (MLflow's lineage,
shown on the run page beside its datasets)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import mlflow
import pandas as pd
from mlflow.entities import LoggedModelInput
from mlflow.exceptions import MlflowException

from ..errors import BloodmlError
from .registry import model_uri, run_logged_models, source_run
from .runs import logged_params, set_tags

PARENT_MODEL, PARENT_RUN = "bloodml.parent_model", "bloodml.parent_run"


@dataclass(frozen=True)
class ParentRun:
    reference: str  # as the user gave it
    run_id: str
    params: dict[str, str]
    manifest: pd.DataFrame  # its split manifest (split_manifest.csv)
    experiment_id: str


def parent_run(reference: str) -> ParentRun:
    """The run that trained the model ``reference`` (run ID, runs:/ or models:/ URI), its parameters and split
    manifest; one line when there is no such run or it kept no manifest."""
    try:
        run_id = source_run(model_uri(reference))
    except MlflowException as exc:
        raise BloodmlError(f"model '{reference}' not found ({str(exc).splitlines()[0][:120]}); pass a run ID, "
                           f"runs:/<id>/model or models:/<name>@<alias>, with MLFLOW_TRACKING_URI set to its store.")
    if not run_id:
        raise BloodmlError(f"model '{reference}': adapting needs the run that trained it (its training images are "
                           f"the source); pass a run ID, runs:/<id>/model or models:/<name>@<alias>.")
    params = logged_params(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.MlflowClient().download_artifacts(run_id, "split_manifest.csv", tmp)
        except (MlflowException, OSError):
            raise BloodmlError(f"run {run_id} kept no split_manifest.csv, so its training images are unknown; "
                               f"adapt a model trained by bloodml train.")
        manifest = pd.read_csv(local, keep_default_na=False)
    experiment = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    return ParentRun(reference, run_id, params, manifest, experiment)


def trained_on(reference: str) -> set[str]:
    """Content hashes (SHA-256) of the images the model ``reference`` was trained and checked on (its run's split
    manifest: train, val, and an adapted model's new cells); empty when the run or its manifest is unknown."""
    try:
        run = parent_run(reference)
    except BloodmlError:
        return set()
    rows = run.manifest
    if "sha256" not in rows:
        return set()
    return set(rows.loc[rows["split"].isin(["train", "val", "target"]), "sha256"])


def record_lineage(parent: ParentRun) -> None:
    """On the active run: tags naming the parent model and run, and the parent's logged model as an input."""
    set_tags({PARENT_MODEL: parent.reference, PARENT_RUN: parent.run_id})
    models = [m for m in run_logged_models(parent.run_id) if m.name == "model"]
    if models:
        newest = max(models, key=lambda m: m.creation_timestamp)
        mlflow.MlflowClient().log_inputs(mlflow.active_run().info.run_id,
                                         models=[LoggedModelInput(newest.model_id)])


def adapted_from(run_id: str) -> str:
    """The parent model an adapted run names ('' for a run that was not adapted)."""
    return mlflow.MlflowClient().get_run(run_id).data.tags.get(PARENT_MODEL, "")



def patient_model_folder(reference: str, destination) -> str | None:
    """The patient model (``patient_model/``) the run behind ``reference`` logged, downloaded into
    ``destination``; None when it logged none (a fixed pooling) or the reference has no run."""
    try:
        run_id = source_run(model_uri(reference))
        if not run_id:
            return None
        names = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "patient_model")}
        if "patient_model/patient_model.json" not in names:
            return None
        return mlflow.MlflowClient().download_artifacts(run_id, "patient_model", str(destination))
    except MlflowException:
        return None
