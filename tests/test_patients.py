"""Issue 33, the patient model: a learnt attention pooling that finds the cells that matter, patient covariates
(blood count, age) joined and standardised on the training patients, stacked with the image evidence out-of-fold,
logged with the run and read back by evaluate and predict; bad patients tables refused in one line."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from bloodml.config import build_config
from bloodml.errors import BloodmlError
from bloodml.patients.attention import AttentionSettings, attend, fit_attention
from bloodml.patients.covariates import Standardiser, parse_covariates, read_covariates
from bloodml.train import run_training
from clihelp import run_cli
from conftest import cell_image, tiny_overrides


def planted_bags(n_bags: int, seed: int, cells: int = 20, dim: int = 16):
    """Bags of noise cells; a positive bag holds 2 'positive' cells (a shifted direction) among them."""
    rng = np.random.default_rng(seed)
    signal = np.zeros(dim)
    signal[0] = 4.0
    bags, labels, planted = [], [], []
    for b in range(n_bags):
        x = rng.normal(0, 1, (cells, dim))
        positive = b % 2
        where = rng.choice(cells, 2, replace=False) if positive else np.array([], dtype=int)
        x[where] += signal
        bags.append(torch.tensor(x, dtype=torch.float32))
        labels.append(positive)
        planted.append(where)
    return bags, np.array(labels), planted


def test_attention_pooling_finds_the_planted_positive_cells():
    bags, labels, _ = planted_bags(60, seed=0)
    model = fit_attention([b[None] for b in bags], labels, AttentionSettings(hidden=32, epochs=30, lr=2e-3, seed=0))
    test_bags, test_labels, planted = planted_bags(20, seed=1)
    logits, weights = attend(model, test_bags)
    positives = [i for i in range(20) if test_labels[i]]
    # the planted cells hold most of the attention in positive bags (chance: 2 of 20 cells = 0.10)
    mass = np.mean([weights[i][planted[i]].sum() for i in positives])
    assert mass > 0.6, mass
    in_top_two = np.mean([np.isin(planted[i], np.argsort(-weights[i])[:2]).mean() for i in positives])
    assert in_top_two >= 0.8, in_top_two
    assert roc_auc_score(test_labels, logits) >= 0.9  # and the bags are told apart


def write_patients(root: Path, rows: list[tuple], name: str = "patients.csv") -> Path:
    pd.DataFrame(rows, columns=["patient", "lymph_count", "year_of_birth"]).to_csv(root / name, index=False)
    return root / name


@pytest.fixture
def patient_cells(tmp_path):
    """16 patients of 6 cells (the cells say the diagnosis, faintly) and a patients table (the count says it)."""
    root = tmp_path / "lymph"
    (root / "images").mkdir(parents=True)
    rows, table = [], []
    for p in range(16):
        diagnosis = "tumoral" if p % 2 else "reactive"
        for c in range(6):
            image, _ = cell_image("alpha" if diagnosis == "tumoral" else "beta", 100 * p + c)
            Image.fromarray(image).save(root / f"images/P{p}_{c}.png")
            rows.append((f"images/P{p}_{c}.png", f"P{p}", diagnosis))
        table.append((f"P{p}", 8.0 + 25.0 * (p % 2) + p % 5, 1940 + p))
    pd.DataFrame(rows, columns=["image", "patient", "diagnosis"]).to_csv(root / "cells.csv", index=False)
    write_patients(root, table)
    return root


def patient_settings(root: Path, **extra) -> dict:
    return tiny_overrides(root, format="manifest", manifest="cells.csv", label_column="diagnosis",
                          group_column="patient", group_labels="true",
                          val_fraction=0.2, test_fraction=0.4, gradcam_samples=0, bootstrap=100, **extra)


def test_covariates_are_read_in_the_patients_order_and_standardised_on_training_patients(patient_cells):
    spec = parse_covariates("patients.csv:lymph_count,year_of_birth", patient_cells)  # found beside the data
    assert spec.path == (patient_cells / "patients.csv").resolve() and spec.columns == ("lymph_count", "year_of_birth")
    values = read_covariates(spec, "patient", ["P3", "P0", "P3"])
    assert values.index.tolist() == ["P3", "P0", "P3"] and values["lymph_count"].tolist() == [36.0, 8.0, 36.0]
    scale = Standardiser.fit(values.to_numpy()[:2])
    assert scale.apply(values.to_numpy()[:2]).mean(0) == pytest.approx([0, 0])
    assert scale.apply(np.array([[8.0, 1940.0]]))[0, 0] == pytest.approx(-1.0)


@pytest.mark.parametrize("case, message", [
    ("missing", "patient P5 is not in the table"),
    ("text", "lymph_count of patient P2 is 'high', not a number"),
    ("empty", "lymph_count of patient P2 is empty"),
    ("no_group", "no 'patient' column (the group column"),
])
def test_a_bad_patients_table_is_refused_in_one_line_before_any_run(patient_cells, capsys, case, message):
    table = pd.read_csv(patient_cells / "patients.csv", dtype=str)
    if case == "missing":
        table = table[table["patient"] != "P5"]
    elif case in ("text", "empty"):
        table.loc[table["patient"] == "P2", "lymph_count"] = "high" if case == "text" else ""
    else:
        table = table.rename(columns={"patient": "id"})
    bad = patient_cells / f"{case}.csv"
    table.to_csv(bad, index=False)
    settings = patient_settings(patient_cells, group_covariates=f"{bad}:lymph_count,year_of_birth")
    code, out, err = run_cli(capsys, "train", *[x for k, v in settings.items() for x in (f"--{k}", v)])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and str(bad) in err and "Traceback" not in out + err
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == [] or all(
        r.info.status != "FINISHED" for r in mlflow.search_runs(search_all_experiments=True, output_format="list"))


def test_group_inputs_without_a_patients_table_or_group_column_are_refused():
    with pytest.raises(BloodmlError, match="needs group_covariates"):
        build_config(None, {"group_column": "patient", "group_inputs": "both"})
    with pytest.raises(BloodmlError, match="set group_column"):
        build_config(None, {"group_aggregate": "attention"})
    with pytest.raises(BloodmlError, match="finetune=none"):
        build_config(None, {"group_column": "patient", "group_aggregate": "attention", "finetune": "last"})


def test_attention_and_covariates_runs_log_the_patient_model_and_evaluate_reads_it_back(patient_cells, tmp_path,
                                                                                      capsys):
    settings = patient_settings(patient_cells, group_aggregate="attention",
                                group_covariates="patients.csv:lymph_count,year_of_birth")
    result = run_training(build_config(None, settings))
    client = mlflow.MlflowClient()
    assert {a.path for a in client.list_artifacts(result.run_id, "patient_model")} == {
        "patient_model/patient_model.json", "patient_model/attention.pt"}
    evaluation = {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/attention.csv", "evaluation/groups_test.csv"} <= evaluation
    attention = pd.read_csv(client.download_artifacts(result.run_id, "evaluation/attention.csv", str(tmp_path)))
    test_cells = attention[attention["split"] == "test"]
    assert len(test_cells) == result.metrics["n_test"]
    assert test_cells.groupby("patient")["attention"].sum().to_numpy() == pytest.approx(1.0, abs=1e-5)
    assert result.metrics["test_groups"] == 7 and "test_group_roc_auc" in result.metrics
    # the covariates carry this task: the count alone separates the patients
    assert result.metrics["test_group_roc_auc"] == pytest.approx(1.0)

    capsys.readouterr()
    code, out, err = run_cli(capsys, "evaluate", "-m", result.run_id, "--data", patient_cells, "--format", "manifest",
                             "--manifest", "cells.csv", "--label_column", "diagnosis", "--group_column", "patient",
                             "--group_covariates", "patients.csv:lymph_count,year_of_birth", "--bootstrap", "100")
    assert code == 0, out + err
    assert "per patient (16 groups, the model's patient call" in out and "patient call: logistic regression" in out
    code, out, err = run_cli(capsys, "evaluate", "-m", result.run_id, "--data", patient_cells, "--format", "manifest",
                             "--manifest", "cells.csv", "--label_column", "diagnosis", "--group_column", "patient",
                             "--group_covariates", "patients.csv:year_of_birth,lymph_count")
    assert code == 2 and "trained on lymph_count,year_of_birth, in that order" in err and err.count("\n") == 1
    # left out, the patients table is the one of the same name beside the new cells, said in one line
    code, out, err = run_cli(capsys, "evaluate", "-m", result.run_id, "--data", patient_cells / "cells.csv",
                             "--bootstrap", "100")
    assert code == 0 and "read as the model's training data was: label_column=diagnosis, group_column=patient" in out
    assert "group_covariates=patients.csv:lymph_count,year_of_birth" in out and "per patient (16 groups" in out

    # predict: the same patient model calls new patients from their cells and their table
    code, out, err = run_cli(capsys, "predict", "-m", result.run_id, patient_cells / "cells.csv", "--group-column",
                             "patient", "--group-covariates", "patients.csv:lymph_count,year_of_birth", "-o",
                             tmp_path / "p.csv")
    assert code == 2 and "patients.csv is not a file" in err  # relative to the working folder: not there
    code, out, err = run_cli(capsys, "predict", "-m", result.run_id, patient_cells / "cells.csv", "--group-column",
                             "patient", "--group-covariates",
                             f"{patient_cells / 'patients.csv'}:lymph_count,year_of_birth", "-o", tmp_path / "p.csv")
    assert code == 0, out + err
    calls = pd.read_csv(tmp_path / "p_groups.csv")
    assert len(calls) == 16 and set(calls["group_aggregate"]) == {"patient model"}
    evaluated = pd.read_csv(client.download_artifacts(
        mlflow.search_runs(search_all_experiments=True, output_format="list",
                           filter_string="tags.`bloodml.task` = 'evaluate'")[0].info.run_id,
        "evaluation/groups.csv", str(tmp_path / "ev")))
    merged = calls.merge(evaluated, on="group", suffixes=("", "_evaluate"))
    assert merged["p_tumoral"].to_numpy() == pytest.approx(merged["p_tumoral_evaluate"].to_numpy(), abs=1e-5)
