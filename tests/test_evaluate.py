"""Cross-dataset evaluation: a model trained on one folder scored on another, logged as its own run."""

import mlflow

from bloodml.config import build_config
from bloodml.train import run_training
from clihelp import run_cli
from conftest import tiny_overrides


def test_evaluate_on_another_dataset_with_a_label_map(make_folders, make_wbc, capsys):
    trained = run_training(build_config(None, tiny_overrides(make_folders(per_class=14), epochs=8, lr=0.1,
                                                              gradcam_samples=0)))
    other = make_wbc(per_class=6, classes=("alpha", "beta"))  # codes 1, 2 -> neutrophil, lymphocyte
    code, out, err = run_cli(capsys, "evaluate", "-m", trained.run_id, "--data", other,
                             "--label-map", "neutrophil=alpha,lymphocyte=beta", "--min_class_count", "2",
                             "--bootstrap", "100", "--experiment", "cross")
    assert code == 0, err
    run = mlflow.search_runs(experiment_names=["cross"], output_format="list")[0]
    assert run.data.tags["bloodml.task"] == "evaluate" and run.data.metrics["eval_images"] == 12
    assert 0 <= run.data.metrics["eval_accuracy_ci_low"] <= run.data.metrics["eval_accuracy"]
    assert run.data.metrics["eval_accuracy"] >= 0.75  # same colours mean the same classes here
    code, out, err = run_cli(capsys, "evaluate", "-m", trained.run_id, "--data", other, "--min_class_count", "2")
    assert code == 2 and "--label-map" in err
    code, out, err = run_cli(capsys, "evaluate", "-m", trained.run_id, "--data", other, "--min_class_count", "2",
                             "--label-map", "neutrophil")  # the option the user typed, not class_names
    assert code == 2 and err.startswith("error: --label-map entry 'neutrophil' has no '='; write it like 'LY=")
    code, out, err = run_cli(capsys, "evaluate", "-m", trained.run_id, "--data", other, "--min_class_count", "2",
                             "--label-map", "neutrophil=alfa,lymphocyte=beta")  # a typo in the model's class
    assert code == 2 and "--label-map maps to alfa, not among the model's classes (alpha, beta, gamma)" in err
