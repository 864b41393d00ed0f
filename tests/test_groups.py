"""Issue 16: one call per patient from many cells, with patient-level statistics."""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bloodml.config import build_config, command_parameters
from bloodml.evaluation.calls import CallRule
from bloodml.evaluation.groups import aggregate, group_metrics, group_table
from bloodml.evaluation.metrics import classification_metrics
from bloodml.train import run_training
from clihelp import run_cli
from conftest import cell_image, tiny_overrides


def test_aggregation_rules_against_hand_computed_groups():
    cells = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])  # p(positive) 0.1, 0.4, 0.8, 0.7
    assert aggregate(cells, "mean") == pytest.approx([0.5, 0.5])
    logit = np.mean(np.log([0.1 / 0.9, 0.4 / 0.6, 0.8 / 0.2, 0.7 / 0.3]))
    assert aggregate(cells, "logodds")[1] == pytest.approx(1 / (1 + np.exp(-logit)))
    assert aggregate(cells, "topk", top_k=2) == pytest.approx([0.25, 0.75])  # mean of 0.8 and 0.7
    assert aggregate(cells, "topk", top_k=99) == pytest.approx([0.5, 0.5])  # k larger than the group: every cell
    assert aggregate(cells, "share", threshold=0.5) == pytest.approx([0.5, 0.5])  # 2 of 4 at or above 0.5
    assert aggregate(cells, "share", threshold=0.75) == pytest.approx([0.75, 0.25])
    assert aggregate(cells[:, ::-1], "topk", top_k=1, positive=0) == pytest.approx([0.8, 0.2])
    three = np.array([[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.1, 0.8, 0.1]])
    assert aggregate(three, "share") == pytest.approx([2 / 3, 1 / 3, 0])  # votes
    top = np.array([0.6, 0.8, 0.4]) / 1.8  # each class's best cell, renormalised
    assert aggregate(three, "topk", top_k=1) == pytest.approx(top)
    with pytest.raises(ValueError, match="group_aggregate='max' is unknown"):
        aggregate(cells, "max")


def test_group_table_calls_each_group_once():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.45, 0.55]])
    table = group_table(["P1", "P1", "P2", "P2", "P2"], np.array([0, 0, 1, 1, 0]), probabilities,
                        ["reactive", "tumoral"], CallRule(aggregate="mean", threshold=0.5))
    assert list(table["group"]) == ["P1", "P2"] and list(table["n_cells"]) == [2, 3]
    assert list(table["true_label"]) == ["reactive", "tumoral"] and list(table["mixed_labels"]) == [0, 1]
    assert table["p_tumoral"].tolist() == pytest.approx([0.15, (0.7 + 0.6 + 0.55) / 3])
    assert list(table["predicted_label"]) == ["reactive", "tumoral"]
    unlabelled = group_table(["a", "a"], None, probabilities[:2], ["reactive", "tumoral"])
    assert "true_label" not in unlabelled and list(unlabelled["predicted_label"]) == ["reactive"]


def test_group_intervals_resample_groups_not_cells():
    """12 patients of 50 cells each; within a patient every cell gets the same call (right for 9, wrong for 3). Per
    cell, 600 'independent' cases give a narrow interval; per patient, 12 cases give the honest, wide one."""
    rng = np.random.default_rng(0)
    groups, labels, probabilities = [], [], []
    for patient in range(12):
        label = patient % 2
        right = patient < 9
        p_positive = 0.8 if (label == 1) == right else 0.2
        for _ in range(50):
            groups.append(f"P{patient}")
            labels.append(label)
            noisy = np.clip(p_positive + rng.normal(0, 0.02), 0.01, 0.99)
            probabilities.append([1 - noisy, noisy])
    labels, probabilities = np.array(labels), np.array(probabilities)
    cells = classification_metrics(labels, probabilities, "", ["a", "b"], 1, n_boot=500)
    table = group_table(groups, labels, probabilities, ["a", "b"])
    patients = group_metrics(table, ["a", "b"], "test_", CallRule(positive=1), n_boot=500)
    assert cells["accuracy"] == pytest.approx(0.75) and patients["test_group_accuracy"] == pytest.approx(0.75)
    assert patients["test_groups"] == 12
    cell_width = cells["accuracy_ci_high"] - cells["accuracy_ci_low"]
    patient_width = patients["test_group_accuracy_ci_high"] - patients["test_group_accuracy_ci_low"]
    assert patient_width > 3 * cell_width  # 12 cases, not 600
    auc_width = patients["test_group_roc_auc_ci_high"] - patients["test_group_roc_auc_ci_low"]
    cell_auc = classification_metrics(labels, probabilities, "", ["a", "b"], 1, n_boot=500)
    assert auc_width > 3 * (cell_auc["roc_auc_ci_high"] - cell_auc["roc_auc_ci_low"])


@pytest.fixture
def make_patients(tmp_path):
    """A manifest dataset of patients: every cell carries its patient's diagnosis (colour says it, noisily)."""

    def build(patients: int = 10, cells: int = 6, mixed: str = "") -> Path:
        root = tmp_path / "patients"
        (root / "images").mkdir(parents=True)
        rows = []
        for p in range(patients):
            diagnosis = "tumoral" if p % 2 else "reactive"
            for c in range(cells):
                label = "reactive" if (f"P{p}" == mixed and c == 0) else diagnosis
                image, _ = cell_image("alpha" if diagnosis == "tumoral" else "beta", 100 * p + c)
                name = f"images/P{p}_{c}.png"
                Image.fromarray(image).save(root / name)
                rows.append((name, f"P{p}", label))
        pd.DataFrame(rows, columns=["image", "patient", "diagnosis"]).to_csv(root / "cells.csv", index=False)
        return root

    return build


def patient_overrides(root: Path, **extra) -> dict:
    return tiny_overrides(root, format="manifest", manifest="cells.csv", label_column="diagnosis",
                          group_column="patient", val_fraction=0.2, test_fraction=0.4, gradcam_samples=0,
                          bootstrap=200, **extra)


def test_a_patient_with_two_labels_stops_with_one_line_when_labels_belong_to_patients(make_patients, capsys):
    root = make_patients(mixed="P3")
    code, _, err = run_cli(capsys, "train", *flags(patient_overrides(root, group_labels="true")))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "group P3" in err and "reactive (1 cells), tumoral (5 cells)" in err and "group_labels=false" in err


def test_group_level_metrics_and_table_are_logged_next_to_the_cell_level_ones(make_patients, tmp_path, capsys):
    root = make_patients()
    result = run_training(build_config(None, patient_overrides(root, group_aggregate="logodds")))
    metrics = result.metrics
    for key in ("test_accuracy", "test_group_accuracy", "test_group_accuracy_ci_low", "test_group_roc_auc",
                "test_group_roc_auc_ci_high", "test_group_sensitivity", "test_group_specificity",
                "test_group_balanced_accuracy", "val_final_group_accuracy"):
        assert key in metrics, key
    test_patients = result.data.split("test")["source_group"].nunique()
    assert metrics["test_groups"] == test_patients == 4
    groups = pd.read_csv(mlflow.MlflowClient().download_artifacts(result.run_id, "evaluation/groups_test.csv",
                                                                   str(tmp_path)))
    assert sorted(groups["group"]) == sorted(result.data.split("test")["source_group"].unique())
    assert list(groups.columns[:4]) == ["group", "n_cells", "true_label", "mixed_labels"]
    assert groups["n_cells"].sum() == metrics["n_test"]
    cells = pd.read_csv(mlflow.MlflowClient().download_artifacts(result.run_id, "evaluation/predictions_test.csv",
                                                                  str(tmp_path)))
    cells["group"] = cells["file"].map(lambda f: Path(f).name.split("_")[0])
    for _, row in groups.iterrows():  # the logged group probability is the rule applied to the logged cells
        mine = cells[cells["group"] == row["group"]][["p_reactive", "p_tumoral"]].to_numpy()
        assert row["p_tumoral"] == pytest.approx(aggregate(mine, "logodds")[1], abs=1e-6)
    accuracy = (groups["true_label"] == groups["predicted_label"]).mean()
    assert metrics["test_group_accuracy"] == pytest.approx(accuracy)
    summary = Path(mlflow.MlflowClient().download_artifacts(result.run_id, "evaluation/summary.md", str(tmp_path)))
    assert summary.read_text().index("group-level metric") < summary.read_text().index("| metric (95% CI)")

    # predict: one row per cell with its group, and one row per patient with the call
    code, out, err = run_cli(capsys, "predict", "-m", result.run_id, root / "cells.csv", "--group-column", "patient",
                             "-o", tmp_path / "p.csv")
    assert code == 0, err
    cells, patients = pd.read_csv(tmp_path / "p.csv"), pd.read_csv(tmp_path / "p_groups.csv")
    assert len(cells) == 60 and set(cells["group"]) == {f"P{p}" for p in range(10)}
    assert len(patients) == 10 and patients["n_cells"].tolist() == [6] * 10
    assert set(patients["group_aggregate"]) == {"logodds"}  # as the model was trained
    for _, row in patients.iterrows():
        mine = cells[cells["group"] == row["group"]][["p_reactive", "p_tumoral"]].to_numpy()
        assert row["p_tumoral"] == pytest.approx(aggregate(mine, "logodds")[1], abs=1e-6)
        assert row["predicted_label"] == ("tumoral" if row["p_tumoral"] >= 0.5 else "reactive")
    code, out, err = run_cli(capsys, "predict", "-m", result.run_id, root / "images", "--group-column", "patient",
                             "-o", tmp_path / "q.csv")
    assert code == 2 and "needs a CSV listing the images" in err

    # evaluate on (here: the same) patients: one call per patient, scored per patient
    evaluating = patient_overrides(root, group_aggregate="topk", group_top_k=2, experiment="ev")
    code, out, err = run_cli(capsys, "evaluate", "-m", result.run_id,  # the settings evaluate takes (no training)
                             *flags({k: v for k, v in evaluating.items() if k in command_parameters("evaluate")}))
    assert code == 0, err
    [run] = mlflow.search_runs(experiment_names=["ev"], output_format="list")
    assert run.data.metrics["eval_groups"] == 10 and "eval_group_roc_auc_ci_low" in run.data.metrics
    calls = pd.read_csv(mlflow.MlflowClient().download_artifacts(run.info.run_id, "evaluation/groups.csv",
                                                                  str(tmp_path / "ev")))
    assert len(calls) == 10 and "per patient (10 groups, topk of their cells)" in out


def test_patients_of_mixed_cell_types_train_without_group_labels(make_patients):
    """A patient's cells may carry different labels (cell types of one smear): only group_labels=true forbids it."""
    root = make_patients(mixed="P3")
    result = run_training(build_config(None, patient_overrides(root)))
    table = result.data.table
    assert table.groupby("source_group")["split"].nunique().max() == 1  # still never split
    assert table.loc[table["source_group"] == "P3", "label"].nunique() == 2


def flags(values: dict) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]
