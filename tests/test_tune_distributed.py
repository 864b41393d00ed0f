"""Scale-out with real services: PostgreSQL for Optuna, an `mlflow server` with a PostgreSQL backend store.

.ci/run starts both (tools/services.sh) and exports BLOODML_TEST_PG_URL and BLOODML_TEST_MLFLOW_URI; without
them these tests are skipped (start them yourself: eval "$(tools/services.sh start /tmp/bloodml-services)").
"""

import os
import signal
import subprocess
import sys
import time
import uuid

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

PG = os.environ.get("BLOODML_TEST_PG_URL")
SERVER = os.environ.get("BLOODML_TEST_MLFLOW_URI")
pytestmark = pytest.mark.skipif(not (PG and SERVER), reason="PostgreSQL + mlflow server not started (see .ci/run)")


def _worker(data, study, n_trials, model_name, log):
    env = {**os.environ, "MLFLOW_TRACKING_URI": SERVER, "BLOODML_HEARTBEAT_S": "1", "BLOODML_GRACE_S": "6",
           "CI": "true"}
    command = [sys.executable, "-m", "bloodml.cli", "tune", "--data", str(data), "--backbone", "test_efficientnet",
               "--pretrained", "false", "--image_size", "32", "--epochs", "3", "--min_class_count", "2",
               "--near_duplicate_distance", "-1", "--gradcam_samples", "0", "--bootstrap", "100", "--masks_dir", "masks",
               "--experiment", f"dist-{study}", "--n_trials", str(n_trials), "--study_name", study,
               "--storage", PG, "--model_name", model_name, "--pruner", "none"]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def _check(study_name, expected, model_name):
    mlflow.set_tracking_uri(SERVER)
    study = optuna.load_study(study_name=study_name, storage=PG)
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == expected, [(t.number, t.state) for t in study.trials]
    run_ids = [t.user_attrs["mlflow_run_id"] for t in done if t.state == TrialState.COMPLETE]
    assert len(run_ids) == len(set(run_ids))  # nothing duplicated
    runs = mlflow.search_runs(experiment_names=[f"dist-{study_name}"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("bloodml.task") == "tune"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    by_trial = {}
    for run in children:
        by_trial.setdefault(int(run.data.tags["optuna.trial"]), []).append(run)
    for trial in done:  # every finished or pruned trial is visible as exactly one successful MLflow run
        states = [r.info.status for r in by_trial[trial.number]]
        assert states.count("FINISHED") + states.count("KILLED") == 1, (trial.number, states)
    champion = mlflow.MlflowClient().get_model_version_by_alias(model_name, "champion")
    assert champion.run_id == study.best_trial.user_attrs["mlflow_run_id"]
    return study, by_trial


def test_three_workers_share_one_study(make_folders, tmp_path):
    data = make_folders(per_class=8)
    name = f"three-{uuid.uuid4().hex[:8]}"
    logs = [open(tmp_path / f"w{i}.log", "w") for i in range(3)]
    workers = [_worker(data, name, 6, name, log) for log in logs]
    codes = [w.wait(timeout=400) for w in workers]
    output = "\n".join((tmp_path / f"w{i}.log").read_text()[-1500:] for i in range(3))
    assert codes == [0, 0, 0], output
    _check(name, 6, name)


def test_killed_worker_is_detected_and_the_study_resumes(make_folders, tmp_path):
    data = make_folders(per_class=8)
    name = f"kill-{uuid.uuid4().hex[:8]}"
    victim_log, survivor_log = tmp_path / "victim.log", tmp_path / "survivor.log"
    victim = _worker(data, name, 4, name, open(victim_log, "w"))
    deadline = time.time() + 120
    while "trial " not in victim_log.read_text() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # inside its first trial
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor = _worker(data, name, 4, name, open(survivor_log, "w"))
    assert survivor.wait(timeout=400) == 0, survivor_log.read_text()[-3000:]
    study, by_trial = _check(name, 4, name)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed, "the killed worker's trial must be marked failed"
    for trial in failed:
        assert all(r.info.status == "FAILED" for r in by_trial.get(trial.number, []))

    again = _worker(data, name, 6, name, open(tmp_path / "again.log", "w"))  # same study name: continues
    assert again.wait(timeout=400) == 0, (tmp_path / "again.log").read_text()[-3000:]
    _check(name, 6, name)
