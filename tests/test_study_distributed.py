"""Issue 34: a study run by many workers that share an Optuna storage (PostgreSQL) and an authenticated MLflow
server: every cell (configuration x fold) done exactly once, a killed worker's cell retried by another, the same
per-fold scores as one process, and `bloodml study-report` showing progress, then writing the report.

.ci/run starts the services (tools/services.sh) and exports BLOODML_TEST_PG_URL and BLOODML_TEST_MLFLOW_URI;
without them the three-worker test is skipped (start them yourself: eval "$(tools/services.sh start DIR)"). The
one-worker test runs anywhere, on a SQLite storage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from bloodml.study.runner import run_study
from bloodml.study.spec import load_study
from clihelp import run_cli

PG = os.environ.get("BLOODML_TEST_PG_URL")
SERVER = os.environ.get("BLOODML_TEST_MLFLOW_URI")


def study_file(tmp_path: Path, data: Path, experiment: str) -> Path:
    """2 configurations x 1 repeat x 3 folds on tiny data."""
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "name": f"dist-{experiment}",
        "settings": {"data": str(data), "backbone": "test_efficientnet", "pretrained": False, "image_size": 32,
                     "epochs": 3, "aug_views": 2, "batch_size": 8, "lr": 0.01, "near_duplicate_distance": -1,
                     "min_class_count": 2, "bootstrap": 100, "experiment": experiment},
        "protocol": {"type": "cv", "folds": 3, "repeats": 1, "val_fraction": 0.25},
        "metric": "macro_f1", "factors": {"masks": ["none", "cell"]}, "reference": {"masks": "none"}}))
    return path


def per_fold(report: Path) -> pd.DataFrame:
    table = pd.read_csv(report / "per_fold.csv")
    return table.sort_values(list(table.columns[:2])).reset_index(drop=True)


def test_one_worker_on_a_shared_storage_gives_the_one_process_report(make_folders, tmp_path, capsys):
    data = make_folders(per_class=8)
    spec_path = study_file(tmp_path, data, "one")
    single = run_study(load_study(spec_path), tmp_path / "single")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    code, out, err = run_cli(capsys, "study", "--config", spec_path, "--storage", storage, "--worker", "--out",
                             tmp_path / "shared")
    assert code == 0, out + err
    assert "6 cells enqueued" in out and "cells: 0 done, 0 running, 6 waiting of 6" in out
    pd.testing.assert_frame_equal(per_fold(tmp_path / "single"), per_fold(tmp_path / "shared"))
    [parent] = mlflow.search_runs(experiment_names=["one"], output_format="list",
                                  filter_string="tags.`bloodml.task` = 'study' and tags.`optuna.study` != ''")
    assert parent.info.status == "FINISHED" and parent.data.params["storage"] == storage
    folds = mlflow.search_runs(experiment_names=["one"], output_format="list",
                               filter_string=f"tags.`optuna.study` = '{parent.data.tags['optuna.study']}' and "
                                             f"tags.`bloodml.task` = 'study-fold'")
    assert len(folds) == 6 and {r.info.status for r in folds} == {"FINISHED"}
    code, out, err = run_cli(capsys, "study-report", parent.info.run_id)  # after the fact: progress, report known
    assert code == 0 and "cells: 6 done, 0 running, 0 waiting of 6" in out and "report was written" in out


def _worker(spec_path: Path, storage: str, log, out: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": SERVER, "BLOODML_HEARTBEAT_S": "1", "BLOODML_GRACE_S": "6",
           "CI": "true"}
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    command = [sys.executable, "-m", "bloodml.cli", "study", "--config", str(spec_path), "--storage", storage,
               "--worker", "--out", str(out)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


@pytest.mark.skipif(not (PG and SERVER), reason="PostgreSQL + mlflow server not started (see .ci/run)")
def test_three_workers_one_killed_mid_fold_every_cell_once_and_the_one_process_scores(make_folders, tmp_path,
                                                                                        capsys, monkeypatch):
    data = make_folders(per_class=8)
    experiment = f"dist-{uuid.uuid4().hex[:8]}"
    spec_path = study_file(tmp_path, data, experiment)
    single = run_study(load_study(spec_path), tmp_path / "single")  # the one-process answer (local store)
    del single

    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER)
    mlflow.set_tracking_uri(SERVER)
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    workers = [_worker(spec_path, PG, open(log, "w"), tmp_path / f"out{i}") for i, log in enumerate(logs)]
    name = None
    storage = optuna.storages.RDBStorage(PG)  # one engine for all the polling below
    deadline = time.time() + 300
    victim = None
    while victim is None and time.time() < deadline:  # kill the worker of the first cell that is running
        studies = [s for s in optuna.get_all_study_summaries(storage)
                   if s.study_name.startswith(f"bloodml-study-dist-{experiment}")]
        if studies:
            name = studies[0].study_name
            running = [t for t in optuna.load_study(study_name=name, storage=storage).get_trials(
                states=(TrialState.RUNNING,)) if "worker" in t.user_attrs]
            if running:
                pid = int(running[0].user_attrs["worker"].rsplit(":", 1)[1])
                victim = next(w for w in workers if w.pid == pid)
                time.sleep(0.5)  # inside the fold
                victim.send_signal(signal.SIGKILL)
        time.sleep(0.2)
    assert victim is not None, "\n".join(log.read_text()[-1500:] for log in logs)

    # while they work: progress (cells done / running / waiting)
    parent_run = None
    while parent_run is None and time.time() < deadline:
        parents = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                                     filter_string="tags.`bloodml.task` = 'study'")
        parent_run = parents[0].info.run_id if parents else None
        time.sleep(0.5)
    code, out, err = run_cli(capsys, "study-report", parent_run, "--storage", PG)
    assert code == 0 and "cells: " in out and " done, " in out and " waiting of 6" in out, out + err

    survivors = [w for w in workers if w is not victim]
    codes = [w.wait(timeout=600) for w in survivors]
    output = "\n".join(log.read_text()[-2000:] for log in logs)
    assert codes == [0, 0], output
    study = optuna.load_study(study_name=name, storage=storage)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["cell"] for t in complete) == list(range(6)), output  # each cell exactly once
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed, "the killed worker's cell is marked failed (and retried)"
    folds = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                               filter_string="tags.`bloodml.task` = 'study-fold'")
    assert sorted(r.info.status for r in folds).count("FINISHED") == 6
    assert all(r.info.status == "FAILED" for r in folds if r.info.status != "FINISHED")

    reports = [tmp_path / f"out{i}" for i in range(3) if (tmp_path / f"out{i}" / "per_fold.csv").is_file()]
    assert len(reports) == 1, output  # written once, by the worker that completed the last cell
    pd.testing.assert_frame_equal(per_fold(tmp_path / "single"), per_fold(reports[0]))
    code, out, err = run_cli(capsys, "study-report", parent_run, "--storage", PG, "--out", tmp_path / "again")
    assert code == 0 and "cells: 6 done, 0 running, 0 waiting of 6" in out
    pd.testing.assert_frame_equal(per_fold(reports[0]), per_fold(tmp_path / "again"))
