"""One scoring path: every command turns probabilities into calls by one rule, so a run's confusion matrix, its
predictions and its metrics agree, whatever the threshold."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from bloodml.config import build_config
from bloodml.evaluation.calls import CallRule, called
from bloodml.evaluation.scoring import confusion_frame, score
from bloodml.train import run_training
from bloodml.tracking.runs import download_artifact
from clihelp import run_cli
from conftest import tiny_overrides


def test_evaluate_with_a_threshold_logs_a_confusion_matrix_that_matches_its_metrics(make_folders, capsys, tmp_path):
    """A binary model scored by `evaluate` at threshold 0.3: the confusion matrix, the predictions and the eval_*
    metrics are the same calls (before: the matrix and the predictions took the argmax, the metrics the threshold).
    An untrained-looking model (one epoch, small learning rate) keeps its probabilities near 0.5, so the two
    rules disagree on many cells."""
    data = make_folders(per_class=12, classes=("alpha", "beta"))
    trained = run_training(build_config(None, tiny_overrides(data, epochs=1, lr=1e-5, gradcam_samples=0,
                                                              aug_views=1, threshold=0.3)))
    code, out, err = run_cli(capsys, "evaluate", "-m", trained.run_id, "--data", data, "--threshold", "0.3",
                             "--bootstrap", "100", "--experiment", "scored")
    assert code == 0, err
    run = mlflow.search_runs(experiment_names=["scored"], output_format="list")[0]
    metrics = run.data.metrics
    matrix = pd.read_csv(download_artifact(run.info.run_id, "evaluation/confusion_matrix.csv", tmp_path),
                         index_col=0)
    assert list(matrix.columns) == ["predicted_alpha", "predicted_beta"]
    counts = matrix.to_numpy()
    assert np.isclose(np.trace(counts) / counts.sum(), metrics["eval_accuracy"])
    assert np.isclose(counts[1, 1] / counts[1].sum(), metrics["eval_sensitivity"])  # beta: the positive class
    assert np.isclose(counts[0, 0] / counts[0].sum(), metrics["eval_specificity"])
    predictions = pd.read_csv(download_artifact(run.info.run_id, "evaluation/predictions.csv", tmp_path))
    expected = np.where(predictions["p_beta"] >= 0.3, "beta", "alpha")
    assert list(predictions["predicted_label"]) == list(expected)
    argmax = np.where(predictions["p_beta"] > predictions["p_alpha"], "beta", "alpha")
    assert (expected != argmax).any(), "the model's probabilities did not separate the two rules; the test is moot"


def test_score_gives_calls_confusion_metrics_and_groups_from_one_rule():
    probabilities = np.array([[0.8, 0.2], [0.6, 0.4], [0.35, 0.65], [0.9, 0.1], [0.2, 0.8], [0.55, 0.45]])
    truth = np.array([0, 1, 1, 0, 1, 0])
    rule = CallRule(positive=1, threshold=0.4)
    scored = score(truth, probabilities, ["neg", "pos"], "x_", rule, n_boot=100,
                   group_ids=np.array(["a", "a", "b", "b", "c", "c"]))
    assert list(scored.predicted) == [0, 1, 1, 0, 1, 1]
    assert scored.confusion.tolist() == [[2, 1], [0, 3]]
    assert np.isclose(scored.metrics["x_accuracy"], 5 / 6) and np.isclose(scored.metrics["x_sensitivity"], 1.0)
    assert list(scored.groups["predicted_label"]) == ["neg", "neg", "pos"]  # mean positive 0.3, 0.375, 0.625
    assert scored.metrics["x_groups"] == 3
    frame = confusion_frame(scored.confusion, ["neg", "pos"])
    assert list(frame.columns) == ["predicted_neg", "predicted_pos"] and list(frame.index) == ["true_neg", "true_pos"]


def test_called_is_the_argmax_beyond_two_classes_and_the_threshold_for_two():
    three = np.array([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    assert list(called(three, positive=None, threshold=0.9)) == [1, 2]
    two = np.array([[0.7, 0.3], [0.75, 0.25]])
    assert list(called(two, positive=1, threshold=0.3)) == [1, 0]
    assert list(called(two, positive=0, threshold=0.72)) == [1, 0]
