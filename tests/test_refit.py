"""Issue 33, the final model: `bloodml refit` trains the chosen configuration (a study's best, or a given
configuration) on all the data, carries the study's estimate as its expected performance, and moves @champion
only when asked; a study file with `refit: true` ends with it; `val_fraction=0` trains fixed epochs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from bloodml.study.runner import run_study
from bloodml.study.spec import load_study
from bloodml.tracking.registry import alias_version
from bloodml.refit import run_refit
from clihelp import run_cli
from conftest import REPO, cell_image, tiny_overrides


def patients(root: Path, n: int = 16, start: int = 0) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(start, start + n):
        diagnosis = "tumoral" if p % 2 else "reactive"
        for c in range(6):
            image, _ = cell_image("alpha" if diagnosis == "tumoral" else "beta", 100 * p + c)
            Image.fromarray(image).save(root / f"images/P{p}_{c}.png")
            rows.append((f"images/P{p}_{c}.png", f"P{p}", diagnosis))
    pd.DataFrame(rows, columns=["image", "patient", "diagnosis"]).to_csv(root / "cells.csv", index=False)
    return root


def run_file(tmp_path: Path, root: Path) -> Path:
    values = tiny_overrides(root, format="manifest", manifest="cells.csv", label_column="diagnosis",
                            group_column="patient", group_labels="true", val_fraction=0.2, test_fraction=0.3,
                            gradcam_samples=0, bootstrap=100, epochs=4)
    path = tmp_path / "lymph.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_refit_entry_point_trains_on_every_patient_and_registers_without_moving_champion(tmp_path, capsys):
    root = patients(tmp_path / "dev")
    config = run_file(tmp_path, root)
    command = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "run", str(REPO), "-e", "refit",
               "--env-manager", "local", "--experiment-name", "final", "-P", f"config={config}", "-P",
               f"data={root}", "-P", "register=lymph-final", "-P", "estimate_folds=3", "-P", "estimate_repeats=1"]
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "@champion not moved" in done.stdout + done.stderr
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string="tags.`bloodml.kind` = 'refit'")
    # config= alone: the configuration was cross-validated first (3 folds here), and the refit carries that estimate
    [estimate] = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                    filter_string="tags.`bloodml.task` = 'study-configuration'")
    assert run.data.tags["bloodml.refit_of"] == estimate.info.run_id
    assert run.data.metrics["expected_group_roc_auc"] == pytest.approx(estimate.data.metrics["test_group_roc_auc_mean"])
    assert run.data.metrics["expected_folds"] == 3 and "3-fold cv estimate" in run.data.tags["bloodml.expected"]
    assert run.info.status == "FINISHED"
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert metrics["n_test"] == 0 and metrics["n_train"] + metrics["n_val"] == 96  # every patient's cells
    assert params["test_fraction"] == "0.0" and params["val_fraction"] == "0.1"  # no study: early stopping on 10 %
    assert tags["bloodml.refit_stopping"] == "share" and tags["bloodml.expected"].startswith("group_roc_auc")
    manifest = pd.read_csv(mlflow.MlflowClient().download_artifacts(run.info.run_id, "split_manifest.csv",
                                                                     str(tmp_path / "m")))
    assert set(manifest["split"]) == {"train", "val"} and manifest.groupby("source_group")["split"].nunique().max() == 1
    assert alias_version("lymph-final", "champion") is None  # registered, champion not moved: not asked
    assert mlflow.MlflowClient().get_model_version("lymph-final", "1").run_id == run.info.run_id

    # the final model scores other patients, one call each
    other = patients(tmp_path / "other", n=8, start=100)
    code, out, err = run_cli(capsys, "evaluate", "-m", "models:/lymph-final/1", "--data", other, "--format",
                             "manifest", "--manifest", "cells.csv", "--label_column", "diagnosis", "--group_column",
                             "patient", "--bootstrap", "100")
    assert code == 0 and "per patient (8 groups" in out, out + err


def test_a_study_that_asks_for_a_refit_trains_its_best_configuration_on_all_the_data(tmp_path):
    root = patients(tmp_path / "dev")
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "tiny-lymph", "run": str(run_file(tmp_path, root)), "settings": {"experiment": "s"},
        "protocol": {"type": "cv", "folds": 3, "repeats": 1, "val_fraction": 0.25}, "metric": "group_roc_auc",
        "factors": {"group_aggregate": ["mean", "share"]}, "refit": True}))
    result = run_study(load_study(study_file), tmp_path / "report")
    refit = mlflow.MlflowClient().get_run(result.refit_run_id)
    configurations = {c.info.run_name: c for c in mlflow.search_runs(
        experiment_names=["s"], output_format="list", filter_string="tags.`bloodml.task` = 'study-configuration'")}
    best = max(configurations.values(), key=lambda c: c.data.metrics["test_group_roc_auc_mean"])
    assert refit.data.tags["bloodml.study_run"] == result.parent_run_id
    assert refit.data.tags["bloodml.refit_of"] == best.info.run_id
    assert refit.data.params["group_aggregate"] == best.data.params["group_aggregate"]
    assert refit.data.metrics["expected_group_roc_auc"] == pytest.approx(best.data.metrics["test_group_roc_auc_mean"])
    assert refit.data.tags["bloodml.refit_stopping"] == "share" and refit.data.params["val_fraction"] == "0.1"
    assert refit.data.metrics["n_train"] + refit.data.metrics["n_val"] == 96 and refit.data.metrics["n_test"] == 0
    assert refit.data.tags["mlflow.note.content"].startswith("**Refit on all the data**")
    assert "group_roc_auc" in refit.data.tags["bloodml.expected"] and "tiny-lymph" in refit.data.tags["bloodml.expected"]

    # --stopping epochs: no validation split, the median best epoch of the best configuration's folds
    folds = mlflow.search_runs(experiment_names=["s"], output_format="list",
                               filter_string=f"tags.mlflow.parentRunId = '{best.info.run_id}'")
    median = max(1, int(round(np.median([f.data.metrics["best_epoch"] for f in folds]))))
    fixed = mlflow.MlflowClient().get_run(run_refit(study=result.parent_run_id, stopping="epochs").run_id)
    assert fixed.data.params["epochs"] == str(median) and fixed.data.params["val_fraction"] == "0.0"
    assert fixed.data.metrics["n_train"] == 96 and fixed.data.metrics["stopped_epoch"] == median

    # registered on request; @champion moves only when asked
    run_refit(study=result.parent_run_id, register_name="lymph", alias="candidate")
    assert alias_version("lymph", "candidate") is not None and alias_version("lymph", "champion") is None
    again = run_refit(study=result.parent_run_id, register_name="lymph", champion=True)
    assert str(alias_version("lymph", "champion").version) == again.version == "2"
