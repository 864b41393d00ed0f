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


def test_the_guides_scale_out_recipe_runs_on_loopback(tmp_path):
    """The scale-out guide's commands, run as written on one machine: only the placeholders a reader fills in
    change (the database host and port, the server's address, the artefact store, the paths of the project's files)
    and the tune is made tiny. The passwords come from files, as the guide says: the database's from tools/services.sh."""
    import re
    import signal
    import socket
    import time

    from conftest import REPO

    text = (REPO / "docs" / "guides" / "tuning-and-scale-out.md").read_text()
    block = re.search(r"<!-- scale-out -->\s*```bash[^\n]*\n(.*?)```", text, re.S).group(1)
    lines = block.splitlines()
    users = next(i for i, line in enumerate(lines) if line.startswith("# a user for the workers"))
    worker = next(i for i, line in enumerate(lines) if line.startswith("# on each worker machine"))
    server_part, users_part, worker_part = ("\n".join(lines[a:b]) for a, b in ((0, users), (users, worker),
                                                                             (worker, len(lines))))
    pg_port = re.search(r"127\.0\.0\.1:(\d+)/", PG).group(1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tiny = ("--backbone test_efficientnet --pretrained false --image_size 32 --epochs 1 --aug_views 1 "
            "--gradcam_samples 0 --bootstrap 100 --experiment readme-scale --model_name readme-scale --pruner none")
    fill = [("USER@DBHOST", f"postgres@127.0.0.1:{pg_port}"), ("DBHOST:5432:*:USER:", f"127.0.0.1:{pg_port}:*:postgres:"),
            ("s3://bucket/mlflow", str(tmp_path / "artifacts")), ("--host 10.0.0.5 --port 5000", f"--host 127.0.0.1 --port {port}"),
            ("10.0.0.5:5000", f"127.0.0.1:{port}"), ("pip install -e \".[scale]\"", ":"),
            ("tools/mlflow_users.py", str(REPO / "tools/mlflow_users.py")),
            ("experiments/wbc.yaml", str(REPO / "experiments/wbc.yaml")),
            ("--study_name wbc-lite0 --n_trials 60", f"--study_name readme-{uuid.uuid4().hex[:8]} --n_trials 1 {tiny}")]
    parts = []
    for part in (server_part, users_part, worker_part):
        for placeholder, value in fill:
            part = part.replace(placeholder, value)
        parts.append(part)
    (tmp_path / "db-password").write_text(secret("postgres"))
    (tmp_path / "admin-password").write_text(secrets.token_urlsafe(16))
    (tmp_path / "worker-password").write_text(secrets.token_urlsafe(16))
    (tmp_path / "flask-secret").write_text(secrets.token_urlsafe(16))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "PGPASS", "BLOODML_OPTUNA"))}  # only what the guide sets
    env.update(HOME=str(tmp_path), CI="true", PATH=os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]]))
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(["bash", "-e", "-c", parts[0]], cwd=tmp_path, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(1)
        for part in parts[1:]:
            done = subprocess.run(["bash", "-e", "-c", part], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=400)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "is now @champion" in done.stdout
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
    logs = done.stdout + done.stderr + (tmp_path / "server.log").read_text()
    assert not any(secret_ in logs for secret_ in ((tmp_path / "worker-password").read_text(), secret("postgres")))
