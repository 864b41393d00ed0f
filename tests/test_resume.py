"""Issue 8: a run killed with SIGKILL mid-epoch resumes from its last complete epoch into the same MLflow run and
ends exactly where an uninterrupted run of the same seed ends; checkpoints never load pickled code."""

import os
import pickle
import signal
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch

from bloodml.errors import BloodmlError
from bloodml.training.checkpoint import load_checkpoint
from conftest import TINY_BACKBONE


def _train(data, name, store, *extra):
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "CI": "true"}
    command = [sys.executable, "-m", "bloodml.cli", "train", "--data", str(data), "--backbone", TINY_BACKBONE,
               "--pretrained", "false", "--image_size", "64", "--finetune", "all", "--epochs", "8", "--patience", "0",
               "--min_class_count", "2", "--near_duplicate_distance", "-1", "--gradcam_samples", "0",
               "--bootstrap", "100", "--experiment", "resume", "--run_name", name, *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.parametrize("finetune", ["all", "none"])
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(make_wbc, tmp_path, finetune):
    data = make_wbc(per_class=16)
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    extra = ["--finetune", finetune] + (["--aug_views", "3", "--epochs", "30"] if finetune == "none" else [])
    victim = _train(data, "victim", store, *extra)
    for line in victim.stdout:
        if line.startswith("epoch 3/"):
            victim.send_signal(signal.SIGKILL)  # the process is inside epoch 4 now
            break
    victim.wait()
    assert victim.returncode == -signal.SIGKILL

    mlflow.set_tracking_uri(store)
    killed = mlflow.search_runs(experiment_names=["resume"], output_format="list")[0]
    assert killed.info.status == "RUNNING"
    resumed = subprocess.run([sys.executable, "-m", "bloodml.cli", "train", "--resume", killed.info.run_id],
                             capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": store,
                                                                  "CI": "true"}, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resuming run" in resumed.stdout
    reference = _train(data, "reference", store, *extra)
    reference.communicate(timeout=600)
    assert reference.returncode == 0

    client = mlflow.MlflowClient()
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["resume"], output_format="list")}
    a, b = runs["victim"], runs["reference"]
    assert a.info.run_id == killed.info.run_id and a.info.status == "FINISHED"
    for key in ("test_accuracy", "test_loss", "val_final_loss", "best_epoch", "stopped_epoch"):
        assert a.data.metrics[key] == pytest.approx(b.data.metrics[key], abs=1e-6), key
    for key in ("train_loss", "val_loss", "val_accuracy"):
        mine = sorted((m.step, m.value) for m in client.get_metric_history(a.info.run_id, key))
        theirs = sorted((m.step, m.value) for m in client.get_metric_history(b.info.run_id, key))
        assert [s for s, _ in mine] == [s for s, _ in theirs]  # every epoch once, none lost
        assert np.allclose([v for _, v in mine], [v for _, v in theirs], atol=1e-6)
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pa = mlflow.pytorch.load_model(f"runs:/{a.info.run_id}/model")(x)
        pb = mlflow.pytorch.load_model(f"runs:/{b.info.run_id}/model")(x)
    assert torch.allclose(pa, pb, atol=1e-6)


def test_a_malicious_checkpoint_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "run.pt"
    path.write_bytes(pickle.dumps({"epoch": 3, "trainer": Exploit()}))
    with pytest.raises(BloodmlError, match="never load pickled code"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
