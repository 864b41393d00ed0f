"""Issue 8: a real `mlflow server` stops mid-run and comes back; training goes on and no epoch's metrics are lost."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow

from conftest import TINY_BACKBONE


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _server(store: str, artifacts: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                                "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port),
                                "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("mlflow server did not start")


def test_server_outage_mid_run_loses_nothing(make_wbc, tmp_path):
    port = _free_port()
    store, artifacts = f"sqlite:///{tmp_path / 'server.db'}", str(tmp_path / "artifacts")
    server = _server(store, artifacts, port)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "CI": "true",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
    training = subprocess.Popen(
        [sys.executable, "-m", "bloodml.cli", "train", "--data", str(make_wbc(per_class=16)), "--backbone",
         TINY_BACKBONE, "--pretrained", "false", "--image_size", "64", "--finetune", "all", "--epochs", "10",
         "--patience", "0", "--min_class_count", "2", "--near_duplicate_distance", "-1", "--gradcam_samples", "0",
         "--bootstrap", "100", "--experiment", "outage"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        for line in training.stdout:
            lines.append(line)
            if line.startswith("epoch 2/"):
                server.terminate()  # the server goes away mid-run
                server.wait(timeout=30)
            if line.startswith("epoch 5/"):
                server = _server(store, artifacts, port)  # and comes back
        training.wait(timeout=300)
    finally:
        server.terminate()
    output = "".join(lines)
    assert training.returncode == 0, output[-3000:]
    assert "tracking server unreachable" in output and "reachable again" in output

    server = _server(store, artifacts, port)
    try:
        mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
        run = mlflow.search_runs(experiment_names=["outage"], output_format="list")[0]
        assert run.info.status == "FINISHED"
        client = mlflow.MlflowClient()
        for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, 11)), (key, steps)
        assert "test_accuracy" in run.data.metrics
    finally:
        server.terminate()
        server.wait(timeout=30)
