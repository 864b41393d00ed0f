"""A real training run on synthetic cells with a tiny backbone, tracked in a temporary SQLite MLflow store."""

import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd

from bloodml.config import RunConfig, build_config
from bloodml.splitting.splits import manifest_digest
from bloodml.train import run_training
from conftest import REPO, TINY_BACKBONE, tiny_overrides

PREDICT_IN_NEW_PROCESS = """
import json, sys, mlflow, numpy as np
mlflow.set_tracking_uri(sys.argv[1])
x = np.load(sys.argv[3])
model = mlflow.pyfunc.load_model(f"runs:/{sys.argv[2]}/model")
torch_model = mlflow.pytorch.load_model(f"runs:/{sys.argv[2]}/model")
import torch
with torch.no_grad():
    same = torch_model(torch.from_numpy(x)).numpy()
print(json.dumps({"pyfunc": np.asarray(model.predict(x)).tolist(), "torch": same.tolist(),
                  "classes": model.metadata.metadata["class_names"]}))
"""


def test_run_logs_everything_and_the_model_works_in_a_new_process(make_wbc, tmp_path):
    root = make_wbc(per_class=20)
    result = run_training(build_config(None, tiny_overrides(root, epochs=8, patience=0, lr=0.1)))
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert set(RunConfig().to_params()) <= set(run.data.params)
    assert run.data.params["backbone"] == TINY_BACKBONE and run.data.params["batch_size"] == "8"
    assert run.data.tags["masks_used"] == "false"
    for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(result.run_id, key)] == list(range(1, 9))
    for key in ("test_accuracy", "test_macro_f1", "best_epoch", "stopped_epoch"):
        assert key in run.data.metrics
    assert run.data.metrics["test_accuracy"] >= 0.75  # colour says the class: a real run must learn it

    evaluation = {a.path.split("/")[-1] for a in client.list_artifacts(result.run_id, "evaluation")}
    assert {"summary.md", "metrics.json", "learning_curves.png", "confusion_matrix.png", "confusion_matrix.csv",
            "reliability.png", "misclassified.png", "gradcam.png", "predictions_test.csv", "roc.png"} <= evaluation
    for key in ("test_accuracy_ci_low", "test_mcc_ci_high", "test_roc_auc", "test_sensitivity", "test_ece"):
        assert key in run.data.metrics, key
    # Grad-CAM scored every masked test image: a usable map, or a blank one (points at nothing) counted apart
    scored = run.data.metrics
    assert scored["saliency_images"] + scored["saliency_blank_maps"] == scored["n_test"] == 6
    for key in ("saliency_relevance_mass", "saliency_relevance_chance", "saliency_pointing_game"):
        assert (key in scored) == (scored["saliency_images"] > 0), key
    manifest = pd.read_csv(client.download_artifacts(result.run_id, "split_manifest.csv", str(tmp_path)))
    assert list(manifest.columns[:6]) == ["path", "label", "group", "split", "sha256", "phash"]
    assert manifest.groupby("group")["split"].nunique().max() == 1 and len(manifest) == 40

    # what the MLflow UI shows: a dataset per split with its digest and context, a description, a kind to filter on
    [found] = mlflow.search_runs(filter_string="tags.`bloodml.kind` = 'train'", output_format="list",
                                 search_all_experiments=True)
    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
              for d in found.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"} and {d.name for d in inputs.values()} == {root.name}
    for split, dataset in inputs.items():
        rows = manifest[manifest["split"] == split]
        assert dataset.digest == manifest_digest(rows) and json.loads(dataset.profile)["num_rows"] == len(rows)
    assert len({d.digest for d in inputs.values()}) == 3
    description = found.data.tags["mlflow.note.content"]
    assert description.startswith(f"**{TINY_BACKBONE}**, frozen backbone") and "| macro_f1 |" in description
    assert f"{run.data.metrics['test_macro_f1']:.3f}" in description

    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([sys.executable, "-c", PREDICT_IN_NEW_PROCESS, mlflow.get_tracking_uri(), result.run_id,
                           str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    probabilities = np.array(answer["pyfunc"])
    assert probabilities.shape == (3, 2) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert np.allclose(probabilities, answer["torch"], atol=1e-6)
    assert answer["classes"] == ["lymphocyte", "neutrophil"]  # wbc layout: codes 1, 2 get their cell names


def test_masked_run_is_flagged(make_wbc):
    root = make_wbc(per_class=10)
    result = run_training(build_config(None, tiny_overrides(root, masks="cell", epochs=1)))
    assert mlflow.MlflowClient().get_run(result.run_id).data.tags["masks_used"] == "true"


def test_mlflow_run_entry_point(make_folders, tmp_path):
    """The MLproject wiring: -P values reach the CLI, are logged as given, and the rest are logged resolved."""
    root = make_folders(per_class=8)
    params = tiny_overrides(root, epochs=2)
    command = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "run", str(REPO), "--env-manager", "local",
               "--experiment-name", "project-test"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    command += ["-P", "config=", "-P", "masks=cell", "-P", "masks_dir=masks"]
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}  # an active venv
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["project-test"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    logged = runs[0].data
    assert logged.params["masks"] == "cell" and logged.params["epochs"] == "2" and logged.params["seed"] == "42"
    assert logged.tags["masks_used"] == "true" and "test_accuracy" in logged.metrics


def test_no_progress_bars_in_logs_or_ci(make_wbc, capfd, monkeypatch):
    """CI=true (set for every test): a run that logs and hashes its model prints plain lines, no '%|' bars."""
    from bloodml.config import build_config
    from bloodml.train import run_training
    from conftest import tiny_overrides

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    run_training(build_config(None, tiny_overrides(make_wbc(per_class=4), epochs=1, gradcam_samples=0)))
    out, err = capfd.readouterr()
    assert "epoch 1/1" in out and "%|" not in out + err
