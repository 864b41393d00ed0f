"""Short real runs on the shared datasets (skipped where ../shared/data is absent)."""

import mlflow

from bloodml.config import build_config
from bloodml.train import run_training
from conftest import ALLIDB2, REPO, WBC, needs_allidb2, needs_wbc


@needs_wbc
def test_efficientnet_lite0_imagenet_weights_learn_wbc_types():
    config = build_config(REPO / "experiments/wbc.yaml", {
        "data": str(WBC), "backbone": "efficientnet_lite0", "epochs": 6, "aug_views": 2, "patience": 0})
    result = run_training(config)
    metrics = mlflow.MlflowClient().get_run(result.run_id).data.metrics
    # Majority class (neutrophil) is 0.59 of the validation split; ImageNet features must do far better.
    assert metrics["val_majority_rate"] < 0.62
    assert metrics["val_final_accuracy"] >= metrics["val_majority_rate"] + 0.15, metrics
    assert metrics["test_accuracy_ci_low"] < metrics["test_accuracy"] < metrics["test_accuracy_ci_high"]
    assert 0 < metrics["saliency_relevance_chance"] < 1 and 0 <= metrics["saliency_relevance_mass"] <= 1


@needs_allidb2
def test_allidb2_runs_through_its_mapping_with_masks():
    config = build_config(REPO / "experiments/allidb2.yaml", {
        "data": str(ALLIDB2), "backbone": "efficientnet_lite0", "masks": "cell", "epochs": 3, "aug_views": 1})
    result = run_training(config)
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.tags["masks_used"] == "true"
    assert "test_roc_auc" in run.data.metrics and "saliency_pointing_game" in run.data.metrics
    assert result.classes == ["blast_ALL", "normal"]
    assert run.data.metrics["n_test"] + run.data.metrics["n_val"] + run.data.metrics["n_train"] == 260
