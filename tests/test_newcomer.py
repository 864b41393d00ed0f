"""What a newcomer trips on, each checked: commands printed so they run as printed, a Python without bloodml's
packages named in one line, a served masked model's example request that carries the mask, tuning and study runs
in their named experiment under `mlflow run`."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
from PIL import Image

from bloodml.inputs.input_spec import InputSpec
from bloodml.serving.command import curl_example, needs_mask
from bloodml.tracking.runs import adopt_launched_run
from bloodml.tracking.store import configure_tracking, ui_hint
from conftest import REPO, cell_image


def test_the_ui_command_names_this_pythons_mlflow_when_path_has_another(monkeypatch, tmp_path):
    """After `make demo` the venv is not active: the printed `mlflow ui ...` must be the venv's own."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    hint = ui_hint("sqlite:///mlflow.db")
    command = hint.split()[0]
    assert command == str(Path(sys.executable).parent / "mlflow") and os.access(command, os.X_OK)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    assert ui_hint("sqlite:///mlflow.db").startswith("mlflow ui --backend-store-uri sqlite:///mlflow.db")


def test_a_python_without_bloodmls_packages_gets_one_line_naming_it_and_the_fix():
    """`mlflow run .` with the system's python on PATH: bloodml is found (the working directory), torch is not."""
    bare = [sys.executable, "-S", "-c", "import sys, runpy; sys.path.insert(0, sys.argv[1]); "
            "runpy.run_module('bloodml.cli', run_name='__main__')", str(REPO), "train", "--help"]
    done = subprocess.run(bare, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"{sys.executable} cannot import" in done.stderr and "source .venv/bin/activate" in done.stderr


def test_serve_prints_a_request_with_the_mask_for_a_masked_model_and_it_carries_both_files(tmp_path):
    assert needs_mask(InputSpec(mask_mode="cell")) and not needs_mask(InputSpec())
    assert not needs_mask(InputSpec(mask_mode="cell", masks_from="model:runs:/x/segmenter"))
    image, mask = cell_image("alpha", 1)
    Image.fromarray(image).save(tmp_path / "cell.bmp")
    Image.fromarray(mask).save(tmp_path / "cell_mask.png")
    for masked in (False, True):
        write = curl_example("0.0.0.0", 5000, masked)[0]
        subprocess.run(["bash", "-e", "-c", write], cwd=tmp_path, check=True, timeout=30)
        request = json.loads((tmp_path / "request.json").read_text())["dataframe_split"]
        assert request["columns"] == (["image", "mask"] if masked else ["image"])
        files = [base64.b64decode(cell) for cell in request["data"][0]]
        assert files == [(tmp_path / name).read_bytes() for name in ("cell.bmp", "cell_mask.png")[:1 + masked]]
    assert curl_example("0.0.0.0", 5000)[1].endswith("http://127.0.0.1:5000/invocations")


def test_under_mlflow_run_a_study_parent_lands_in_its_named_experiment(monkeypatch):
    """`mlflow run -e tune` starts its run in MLflow's Default experiment: the parent is made in the configured
    experiment and the launched run is left as a named pointer, not a randomly named parent in Default."""
    configure_tracking()
    client = mlflow.MlflowClient()
    launched = client.create_run("0", run_name="fancy-goose-123").info.run_id  # what `mlflow run` makes
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    assert adopt_launched_run({"bloodml.task": "tune"}, None, "bloodml", "tune-wbc") is None
    pointer = client.get_run(launched)
    assert pointer.data.tags["mlflow.runName"] == "tune-wbc (runs in experiment bloodml)"
    assert "experiment 'bloodml'" in pointer.data.tags["mlflow.note.content"]
    here = client.create_run(client.get_experiment_by_name("bloodml").experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", here)  # `mlflow run --experiment-name bloodml`: that run is the parent
    assert adopt_launched_run({"bloodml.task": "tune"}, {"n_trials": 2}, "bloodml", "tune-wbc") == here
    adopted = client.get_run(here)
    assert adopted.data.tags["mlflow.runName"] == "tune-wbc" and adopted.data.params["n_trials"] == "2"
