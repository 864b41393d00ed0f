"""Scale-out that lets no one in: the tracking server's basic auth, and no password in a run, log or error.

Needs the services of tools/services.sh (PostgreSQL with password authentication, an mlflow server with the
basic-auth app), which .ci/run starts; skipped without them (eval "$(tools/services.sh start DIR)").
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient

PG = os.environ.get("BLOODML_TEST_PG_URL")
SERVER = os.environ.get("BLOODML_TEST_MLFLOW_URI")
SECRETS = Path(os.environ.get("BLOODML_TEST_SECRETS", "/nonexistent"))
pytestmark = pytest.mark.skipif(not (PG and SERVER and SECRETS.is_dir()),
                                reason="authenticated services not started (see .ci/run and tools/services.sh)")


def secret(name: str) -> str:
    return (SECRETS / name).read_text().strip()


def as_user(monkeypatch, name: str, password: str) -> mlflow.MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", name)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    mlflow.set_tracking_uri(SERVER)
    return mlflow.MlflowClient(SERVER)


def tune_command(data, experiment: str, model_name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bloodml.cli", "tune", "--data", str(data), "--backbone", "test_efficientnet",
            "--pretrained", "false", "--image_size", "32", "--epochs", "2", "--min_class_count", "2",
            "--near_duplicate_distance", "-1", "--gradcam_samples", "0", "--bootstrap", "100", "--masks_dir", "masks",
            "--experiment", experiment, "--n_trials", "1", "--study_name", experiment, "--model_name", model_name,
            "--pruner", "none", *extra]


def test_no_credentials_401_read_only_403_worker_may_log(monkeypatch, make_folders, tmp_path):
    request = urllib.request.Request(f"{SERVER}/api/2.0/mlflow/experiments/search?max_results=1")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401

    tag = uuid.uuid4().hex[:8]
    worker = as_user(monkeypatch, "worker", secret("mlflow-worker"))
    experiment = worker.create_experiment(f"auth-{tag}")
    run = worker.create_run(experiment)
    worker.log_metric(run.info.run_id, "trial_score", 0.5)  # the worker logs trials
    worker.set_terminated(run.info.run_id)
    model = f"auth-{tag}"
    worker.create_registered_model(model)

    as_user(monkeypatch, "admin", secret("mlflow-admin"))
    reader, password = f"reader-{tag}", secrets.token_urlsafe(16)
    AuthServiceClient(SERVER).create_user(reader, password)
    read_only = as_user(monkeypatch, reader, password)
    assert read_only.get_run(run.info.run_id).data.metrics["trial_score"] == 0.5  # READ by default
    with pytest.raises(MlflowException) as denied:
        read_only.log_metric(run.info.run_id, "tampered", 1.0)
    assert denied.value.get_http_status_code() == 403
    with pytest.raises(MlflowException) as denied:
        read_only.set_registered_model_alias(model, "champion", "1")
    assert denied.value.get_http_status_code() == 403

    # a user who may log trials but not promote says so in one line and leaves the promotion to whoever may
    data = make_folders(per_class=8)
    env = {**os.environ, "MLFLOW_TRACKING_URI": SERVER, "MLFLOW_TRACKING_USERNAME": reader,
           "MLFLOW_TRACKING_PASSWORD": password, "BLOODML_OPTUNA_STORAGE": PG, "CI": "true"}
    done = subprocess.run(tune_command(data, f"auth-tune-{tag}", model), env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    [line] = [x for x in done.stdout.splitlines() if x.startswith("registry:")]
    assert f"{reader} may not register a version on registered model '{model}'" in line
    assert "bloodml register" in line and "as a user who may" in line


def test_no_password_in_runs_logs_or_errors(make_folders, tmp_path):
    """A tune against the real services, the storage password known: it is in no run parameter or tag, no output
    of any process (the worker's, the services'), and not in the error of an unreachable storage."""
    passwords = {secret("postgres"), secret("mlflow-worker"), secret("mlflow-admin")}
    data = make_folders(per_class=8)
    tag = uuid.uuid4().hex[:8]
    env = {**os.environ, "MLFLOW_TRACKING_URI": SERVER, "BLOODML_OPTUNA_STORAGE": PG, "CI": "true"}
    done = subprocess.run(tune_command(data, f"secret-{tag}", f"secret-{tag}"), env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    unreachable = PG.replace("postgres@", f"postgres:{secret('postgres')}@").replace(":55432/", ":1/")
    failed = subprocess.run(tune_command(data, f"secret-{tag}-x", f"secret-{tag}-x", "--storage", unreachable),
                            env=env, capture_output=True, text=True, timeout=200)
    assert failed.returncode == 2 and "cannot be opened" in failed.stderr and "postgres:***@" in failed.stderr

    mlflow.set_tracking_uri(SERVER)
    runs = mlflow.search_runs(experiment_names=[f"secret-{tag}"], output_format="list")
    assert len(runs) >= 2  # the study's parent and its trial
    seen = [done.stdout, done.stderr, failed.stdout, failed.stderr]
    seen += [f"{k}={v}" for run in runs for k, v in {**run.data.params, **run.data.tags}.items()]
    seen += [p.read_text(errors="replace") for p in (SECRETS.parent / "run").glob("*.log")]
    for password in passwords:
        assert not any(password in text for text in seen)
