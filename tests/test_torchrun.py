"""Issue 34: fine-tuning under torchrun (PyTorch DDP), here 2 CPU processes on gloo: one MLflow run whose metrics
are logged once per epoch by the main process, and a SIGKILL of the whole job followed by a rerun with --resume
continues the same run from its last complete epoch."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow

from conftest import TINY_BACKBONE

EPOCHS = 8


def _torchrun(store: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "CI": "true", "BLOODML_DIST_BACKEND": "gloo", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m",
               "bloodml.cli", "train", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def kill_job(pid: int) -> None:
    """SIGKILL torchrun and every process under it (its workers run in their own process groups)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    family, queue = [], [pid]
    while queue:
        current = queue.pop()
        family.append(current)
        queue += children.get(current, [])
    for member in family:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_two_processes_fine_tune_one_run_logged_once_and_a_killed_job_resumes(make_wbc, tmp_path):
    data = make_wbc(per_class=24)
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    job = _torchrun(store, "--data", str(data), "--backbone", TINY_BACKBONE, "--pretrained", "false", "--image_size",
                    "64", "--finetune", "all", "--epochs", str(EPOCHS), "--patience", "0", "--batch_size", "8",
                    "--min_class_count", "2", "--near_duplicate_distance", "-1", "--gradcam_samples", "0",
                    "--bootstrap", "100", "--threads", "1", "--device", "cpu", "--experiment", "ddp")
    seen = []
    for line in job.stdout:
        seen.append(line)
        if line.startswith("epoch 2/"):  # its checkpoint is written before the line: kill inside epoch 3
            kill_job(job.pid)
            break
    job.wait()
    assert any(line.startswith("epoch 2/") for line in seen), "".join(seen)[-3000:]

    mlflow.set_tracking_uri(store)
    [killed] = mlflow.search_runs(experiment_names=["ddp"], output_format="list")  # one run, not one per process
    assert killed.info.status == "RUNNING"
    resumed = _torchrun(store, "--resume", killed.info.run_id)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    assert "resuming run" in output and "torchrun: 2 processes" in output and "(DDP, gloo)" in output
    assert output.count(f"epoch {EPOCHS}/{EPOCHS}") == 1  # printed by the main process alone

    [run] = mlflow.search_runs(experiment_names=["ddp"], output_format="list")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))  # every epoch once, none twice
    assert run.data.metrics["stopped_epoch"] == EPOCHS and "test_accuracy" in run.data.metrics
