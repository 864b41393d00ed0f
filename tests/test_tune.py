"""Optuna tuning with the real Optuna and MLflow (local SQLite stores), tiny backbone, synthetic cells."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pandas as pd

from bloodml.config import build_config
from bloodml.train import run_training
from bloodml.tuning.champion import promote
from bloodml.tuning.space import DEFAULT_SPACE, load_space, validate_space
from bloodml.tuning.study import TuneSettings, tune
from clihelp import run_cli
from conftest import REPO, tiny_overrides

SPACE = """space:
  dropout: {type: float, low: 0.0, high: 0.5}
  l2: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}
  balance: {type: categorical, choices: [none, weights]}
"""


def test_study_nests_trials_registers_champion_and_resumes(make_wbc, tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    config = build_config(None, tiny_overrides(make_wbc(per_class=10), epochs=4, gradcam_samples=0, bootstrap=100,
                                               experiment="tuning"))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    settings = TuneSettings(n_trials=4, study_name="s1", storage=storage, space=str(tmp_path / "space.yaml"),
                            model_name="cells")
    first = tune(config, settings)
    study = optuna.load_study(study_name="s1", storage=storage)
    assert len(study.trials) == 4 and first["complete"] + first["pruned"] == 4
    client = mlflow.MlflowClient()
    parent = client.get_run(first["parent_run_id"])
    children = mlflow.search_runs(experiment_names=["tuning"], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4 and {c.data.tags["optuna.trial"] for c in children} == {"0", "1", "2", "3"}
    assert {c.data.params["dropout"] == f"{t.params['dropout']}" for c in children for t in study.trials
            if c.data.tags["optuna.trial"] == str(t.number)} == {True}
    assert {c.data.tags["bloodml.state"] for c in children} <= {"COMPLETE", "PRUNED"}
    champion = client.get_model_version_by_alias("cells", "champion")
    assert champion.run_id == study.best_trial.user_attrs["mlflow_run_id"] == first["best_run_id"]
    study_files = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/optimization_history.png", "study/slice.png", "study/trials.csv"} <= study_files

    second = tune(config, TuneSettings(**{**settings.__dict__, "n_trials": 6}))  # same study name: continues
    study = optuna.load_study(study_name="s1", storage=storage)
    assert [t.number for t in study.trials] == list(range(6))
    assert second["parent_run_id"] == first["parent_run_id"]


def test_champion_only_replaced_by_a_better_model(make_wbc):
    root = make_wbc(per_class=20)
    good = run_training(build_config(None, tiny_overrides(root, epochs=8, lr=0.1, gradcam_samples=0, bootstrap=100)))
    bad = run_training(build_config(None, tiny_overrides(root, epochs=1, lr=1e-7, gradcam_samples=0, bootstrap=100)))
    val = good.data.split("val")
    version, promoted, reason = promote("m", good.run_id, "val_macro_f1", good.metrics["val_final_macro_f1"], val)
    assert promoted and reason == "first champion"
    version, promoted, reason = promote("m", bad.run_id, "val_macro_f1", bad.metrics["val_final_macro_f1"], val)
    assert not promoted and "shared validation images" in reason, reason
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias("m", "champion").run_id == good.run_id
    assert len(client.search_model_versions("name='m'")) == 2  # the challenger is kept as a version

    client.set_registered_model_alias("m", "champion", version)  # pretend the weak one had been champion
    _, promoted, _ = promote("m", good.run_id, "val_macro_f1", good.metrics["val_final_macro_f1"], val)
    assert promoted and client.get_model_version_by_alias("m", "champion").run_id == good.run_id


def test_tune_cli_and_predict_with_the_champion(make_folders, tmp_path, capsys):
    root = make_folders(per_class=8)
    (tmp_path / "space.yaml").write_text(SPACE)
    code, out, err = run_cli(capsys, "tune", "--data", root, "--backbone", "test_efficientnet", "--pretrained",
                             "false", "--image_size", "32", "--epochs", "2", "--min_class_count", "2",
                             "--near_duplicate_distance", "-1", "--gradcam_samples", "0", "--n_trials", "2",
                             "--storage", f"sqlite:///{tmp_path / 'o.db'}", "--space", tmp_path / "space.yaml",
                             "--model_name", "folders", "--refit")
    assert code == 0, err
    assert "is now @champion" in out
    # --refit: the best trial's configuration trained again on all the data, registered as @refit (not champion)
    best_run = mlflow.MlflowClient().get_model_version_by_alias("folders", "champion").run_id
    refit = mlflow.MlflowClient().get_run(mlflow.MlflowClient().get_model_version_by_alias("folders", "refit").run_id)
    assert refit.data.tags["bloodml.kind"] == "refit" and refit.data.tags["bloodml.refit_of"] == best_run
    trial = mlflow.MlflowClient().get_run(best_run)
    assert refit.data.params["val_fraction"] == "0.1" and refit.data.params["lr"] == trial.data.params["lr"]
    assert refit.data.metrics["n_train"] + refit.data.metrics["n_val"] == 24 and refit.data.metrics["n_test"] == 0
    assert refit.data.metrics["expected_macro_f1"] == trial.data.metrics["test_macro_f1"]
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    assert f"watch it: optuna-dashboard {storage}" in out

    # optuna-dashboard serves the finished study's trials from that storage, over HTTP
    trials = dashboard_trials(storage, tmp_path / "dashboard.log")
    study = optuna.load_study(study_name=trials["name"], storage=storage)
    assert [t["number"] for t in trials["trials"]] == [t.number for t in study.trials] == [0, 1]
    assert all(t["state"] in ("Complete", "Pruned") for t in trials["trials"])
    assert {p["name"] for p in trials["trials"][0]["params"]} == set(study.trials[0].params)
    code, out, err = run_cli(capsys, "predict", "-m", "models:/folders@champion", root / "beta", "-o", tmp_path / "p.csv")
    assert code == 0 and len(pd.read_csv(tmp_path / "p.csv")) == 8, err
    code, out, err = run_cli(capsys, "tune", "--data", root, "--objective", "speed")
    assert code == 2 and "objective='speed' is unknown" in err


def dashboard_trials(storage: str, log) -> dict:
    """Start optuna-dashboard on ``storage``, fetch its one study with the trials, stop it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    [summary] = json.loads(answer.read())["study_summaries"]
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, Path(log).read_text()
                time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}?after=0",
                                    timeout=30) as answer:
            return json.loads(answer.read())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)


def test_a_search_space_is_checked_before_any_trial(make_folders, tmp_path, capsys):
    """Every choice and both bounds of a search space must be values the run parameter takes: a typo in a choice, a
    bound out of the parameter's range or of the wrong type is one line when tune starts, not a failure in a trial
    after the data have been read. The shipped space (experiments/tune_space.yaml) and the default space pass."""
    assert load_space(REPO / "experiments/tune_space.yaml") and validate_space(DEFAULT_SPACE, "default space")
    root = make_folders(per_class=6)
    bad = {"balance: {type: categorical, choices: [none, oversampel]}": "balance='oversampel' is not allowed",
           "dropout: {type: float, low: 0.0, high: 1.5}": "dropout=1.5 is out of range",
           "rotation: {type: float, low: none, high: 90}": "rotation='none' is not a valid float",
           "features: {type: categorical, choices: [final, stage]}": "features='stage' is not allowed"}
    for line, message in bad.items():
        (tmp_path / "space.yaml").write_text(f"space:\n  {line}\n")
        code, out, err = run_cli(capsys, "tune", "--data", root, "--backbone", "test_efficientnet", "--pretrained",
                                 "false", "--image_size", "32", "--epochs", "1", "--gradcam_samples", "0",
                                 "--n_trials", "1", "--space", tmp_path / "space.yaml",
                                 "--storage", f"sqlite:///{tmp_path / 'o.db'}")
        assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"search space {tmp_path / 'space.yaml'}" in err
        assert "trial" not in out.lower(), out
