"""Issue 8: two training runs and a tuning worker write to one SQLite store at once; nothing is lost."""

import os
import subprocess
import sys

import mlflow

from conftest import TINY_BACKBONE

FAST = ["--backbone", TINY_BACKBONE, "--pretrained", "false", "--image_size", "32", "--min_class_count", "2",
        "--near_duplicate_distance", "-1", "--gradcam_samples", "0", "--bootstrap", "100", "--patience", "0"]


def test_three_writers_on_one_sqlite_store(make_wbc, tmp_path):
    data = make_wbc(per_class=10)
    store = f"sqlite:///{tmp_path / 'shared.db'}"  # brand new: the processes also race to create it
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "CI": "true"}
    cli = [sys.executable, "-m", "bloodml.cli"]
    commands = [cli + ["train", "--data", str(data), "--epochs", "8", "--experiment", "w", "--run_name", "a", *FAST],
                cli + ["train", "--data", str(data), "--epochs", "8", "--experiment", "w", "--run_name", "b", *FAST],
                cli + ["tune", "--data", str(data), "--epochs", "4", "--experiment", "w", "--n_trials", "2",
                       "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--pruner", "none", *FAST]]
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                 for c in commands]
    outputs = [p.communicate(timeout=400)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], "\n".join(o[-1500:] for o in outputs)

    mlflow.set_tracking_uri(store)
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["w"], output_format="list")
    trained = [r for r in runs if r.data.tags.get("bloodml.task") in ("train", "tune-trial")]
    assert len(trained) == 4 and all(r.info.status == "FINISHED" for r in trained)
    for run in trained:
        epochs = int(run.data.params["epochs"])
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "val_macro_f1"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == list(range(1, epochs + 1)), (run.info.run_name, key, steps)
        for key in ("test_accuracy", "test_macro_f1", "test_accuracy_ci_low", "best_epoch", "n_test"):
            assert key in run.data.metrics
