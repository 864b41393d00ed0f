"""Logging one training run: parameters (without clashing with what `mlflow run` logged), metrics, tags, files."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Param


@contextmanager
def training_run(experiment: str, run_name: str, parent_run_id: str | None = None, tags: dict | None = None):
    """Start (or, under `mlflow run`, attach to) a run; a child of ``parent_run_id`` when given.

    Sets the experiment only when not launched by `mlflow run` (which names the run itself)."""
    if parent_run_id:
        # Under `mlflow run`, MLFLOW_RUN_ID names the parent: a child must not take that run over.
        os.environ.pop("MLFLOW_RUN_ID", None)
        experiment_id = mlflow.MlflowClient().get_run(parent_run_id).info.experiment_id
        with mlflow.start_run(run_name=run_name or None, experiment_id=experiment_id, parent_run_id=parent_run_id,
                              nested=mlflow.active_run() is not None, tags=tags) as run:
            yield run
        return
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name or None, tags=tags) as run:
        yield run


@contextmanager
def resumed_run(run_id: str):
    """Reopen an interrupted run (same run ID, same experiment) to continue logging into it."""
    os.environ.pop("MLFLOW_RUN_ID", None)
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def logged_steps(run_id: str, key: str) -> set[int]:
    return {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key)}


def log_params(params: dict[str, str]) -> None:
    """Log every parameter not already on the run (`mlflow run` logs the -P values itself; params are immutable)."""
    run = mlflow.active_run()
    existing = mlflow.MlflowClient().get_run(run.info.run_id).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    for start in range(0, len(new), 100):
        mlflow.MlflowClient().log_batch(run.info.run_id, params=new[start:start + 100])


def log_table(table: pd.DataFrame, artifact_file: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        table.to_csv(path, index=False)
        parent = str(Path(artifact_file).parent)
        mlflow.log_artifact(str(path), artifact_path=None if parent == "." else parent)
