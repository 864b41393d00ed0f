"""A new instrument in a few labelled cells: `bloodml adapt` (entry point, lineage, target dataset, the served model
answering like predict, bad target cells refused in one line, features from the cache), `bloodml suggest` (copies
never twice, every predicted class covered, a CSV to fill in for adapt, a contact sheet) and the selection rules."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bloodml.config import build_config
from bloodml.evaluation.domain_shift import warning
from bloodml.predict import predict_images
from bloodml.splitting.selection import labelling_pool, random_per_class, suggest_order
from bloodml.train import run_training
from clihelp import run_cli
from conftest import CLASSES, REPO, new_instrument, tiny_overrides

def parent_run(make_folders, **extra) -> str:
    root = make_folders(per_class=8)
    return run_training(build_config(None, tiny_overrides(root, gradcam_samples=0, bootstrap=100, **extra))).run_id


def runs_in_store() -> int:
    return sum(len(mlflow.search_runs([e.experiment_id], output_format="list"))
               for e in mlflow.search_experiments())


def test_adapt_entry_point_logs_lineage_and_target_cells_and_serves_like_predict(make_folders, tmp_path):
    parent = parent_run(make_folders)
    cells = new_instrument(tmp_path / "new", per_class=3)
    command = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "run", str(REPO), "-e", "adapt",
               "--env-manager", "local", "--experiment-name", "adapted", "-P", f"model={parent}", "-P",
               f"data={cells}", "-P", "adapt_epochs=3"]
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    env.pop("MLFLOW_EXPERIMENT_ID", None)  # set by the parent's training in this process
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["adapted"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = mlflow.MlflowClient().get_run(runs[0].info.run_id)
    assert run.data.tags["bloodml.parent_model"] == parent and run.data.tags["bloodml.kind"] == "adapt"
    assert run.data.params["adapt_parent_run"] == parent and run.data.params["adapt_epochs"] == "3"
    assert run.data.params["data"] == str(cells) and run.data.params["source_data"].endswith("folders_synth")
    targets = [d for d in run.inputs.dataset_inputs if d.tags[0].value == "target"]
    assert len(targets) == 1 and '"num_rows": 9' in targets[0].dataset.profile
    parent_model = [m for m in mlflow.search_logged_models(output_format="list")
                    if m.source_run_id == parent and m.name == "model"][0]
    assert [m.model_id for m in run.inputs.model_inputs] == [parent_model.model_id]

    files = sorted((tmp_path / "new").glob("*.png"))[:4]
    expected, _ = predict_images(run.info.run_id, files)
    served = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/image_model").predict(
        pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    assert list(served["label"]) == list(expected["predicted_label"])
    columns = [c for c in expected.columns if c.startswith("p_")]
    assert np.allclose(served[columns], expected[columns], atol=1e-5)


def test_adapt_refuses_bad_target_cells_in_one_line_and_adapts_good_ones_from_the_cache(make_folders, tmp_path,
                                                                                        capsys):
    parent = parent_run(make_folders)
    good = new_instrument(tmp_path / "new", per_class=3)
    table = pd.read_csv(good)
    cases = {
        "unknown": (table.assign(label=table["label"].replace({"gamma": "delta"})), "class 'delta' is not one of"),
        "empty": (table.assign(label=table["label"].where(table.index != 4, "")), "have an empty label"),
        "single": (table.drop(index=[0, 1]), "class 'alpha' has 1 labelled cell"),
    }
    copied = tmp_path / "new" / "copy.png"
    copied.write_bytes((tmp_path / "folders_synth" / "beta" / "cell3.png").read_bytes())
    cases["copy"] = (pd.concat([table, pd.DataFrame([{"image": "copy.png", "label": "beta"}])]),
                     "copy.png is a copy of the model's training image")
    before = runs_in_store()
    capsys.readouterr()  # the parent's training output
    for name, (rows, message) in cases.items():
        path = tmp_path / "new" / f"{name}.csv"
        rows.to_csv(path, index=False)
        code, out, err = run_cli(capsys, "adapt", "-m", parent, "--data", path)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (name, out, err)
        assert message in err and str(path) in err and "Traceback" not in out + err, (name, err)
    assert runs_in_store() == before  # nothing half-written

    code, out, err = run_cli(capsys, "adapt", "-m", parent, "--data", good, "--adapt_epochs", "2")
    assert code == 0, out + err
    # tiny_overrides: aug_views=2; 16 training + 4 validation source images, read from the cache their training
    # filled; only the 9 new cells' 2 views are computed
    assert "(36 cached, 18 computed)" in out, out
    assert "source_val macro-F1" in out

    # scored on the cells it was adapted on, it is flattered: evaluate says so, and --unseen leaves them out
    [adapted] = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                   filter_string="tags.`bloodml.kind` = 'adapt'")
    code, out, err = run_cli(capsys, "evaluate", "-m", adapted.info.run_id, "--data", good, "--min_class_count", "2",
                             "--bootstrap", "100")
    assert code == 0 and "9 of these 9 images were in the model's training data" in out, out + err
    code, out, err = run_cli(capsys, "evaluate", "-m", adapted.info.run_id, "--data", good, "--min_class_count", "2",
                             "--unseen")
    assert code == 2 and "all 9 images were in the training data" in err, out + err


def noisy_copy(path: Path, out: Path) -> None:
    """A near copy: the same cell flipped, slightly brighter and saved as JPEG."""
    image = np.asarray(Image.open(path).convert("RGB")).astype(float)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image[:, ::-1] * 1.03, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=92)
    out.write_bytes(buffer.getvalue())


def test_suggest_never_picks_two_copies_covers_every_predicted_class_and_feeds_adapt(make_folders, tmp_path,
                                                                                     capsys):
    parent = parent_run(make_folders, near_duplicate_distance=8)
    unlabelled = tmp_path / "unlabelled"
    new_instrument(unlabelled, per_class=6, size=64, labels=False, textured=True)
    originals = sorted(unlabelled.glob("*.png"))
    planted = {}
    for i, original in enumerate(originals[::3]):
        exact = unlabelled / f"exact_{i}.png"
        exact.write_bytes(original.read_bytes())
        near = unlabelled / f"near_{i}.jpg"
        noisy_copy(original, near)
        planted[original.name] = {exact.name, near.name}
    (unlabelled / "cells.csv").unlink()
    everything = predict_images(parent, [unlabelled])[0]
    capsys.readouterr()
    out_csv = tmp_path / "work" / "to_label.csv"
    code, out, err = run_cli(capsys, "suggest", "-m", parent, unlabelled, "-n", "100", "-o", out_csv)
    assert code == 0, out + err
    picks = pd.read_csv(out_csv, keep_default_na=False)
    assert list(picks.columns[:3]) == ["rank", "image", "label"] and (picks["label"] == "").all()
    names = [Path(p).name for p in picks["original"]]
    assert len(names) == len(set(names)) == len(originals)  # one per copy group, every group once
    for original, copies in planted.items():
        assert len({original, *copies} & set(names)) == 1, (original, copies, names)
    assert set(picks["predicted"]) == set(everything["predicted_label"])
    assert Image.open(out_csv.with_suffix(".png")).size[0] > 0
    assert "copied into" in out  # the cells lie outside the CSV's folder: copied beside it for adapt

    truth = {f"{label}_{i}.png": label for label in CLASSES for i in range(6)}
    truth.update({name: truth[original] for original, copies in planted.items() for name in copies})
    picks["label"] = [truth[name] for name in names]
    picks.to_csv(out_csv, index=False)
    code, out, err = run_cli(capsys, "adapt", "-m", parent, "--data", out_csv, "--adapt_epochs", "2")
    assert code == 0, out + err


def test_suggest_order_takes_turns_by_predicted_class_and_prefers_uncertain_spread_cells():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 5))
    probabilities = np.full((12, 3), 0.05)
    called = [0] * 8 + [1] * 3 + [2]
    for i, c in enumerate(called):
        probabilities[i, c] = 0.9
    probabilities[5] = [0.45, 0.44, 0.11]  # the most uncertain cell of class 0
    groups = np.array([f"g{i}" for i in range(12)])
    groups[7] = "g5"  # cell 7 is a copy of cell 5
    order = suggest_order(features, probabilities, groups, 6, uncertainty_weight=0.9)
    assert order[0] == 5 and 7 not in order  # the most uncertain first; its copy never
    assert [int(np.argmax(probabilities[i])) for i in order[:3]] == [0, 1, 2]  # every called class in turn
    assert sorted(np.argmax(probabilities[order], 1).tolist()).count(2) == 1  # class 2 has one cell only
    assert len(set(order)) == len(order) == 6


def test_labelling_pool_gives_at_most_half_of_a_class_and_random_draws_respect_it():
    table = pd.DataFrame({"label": ["a"] * 20 + ["b"] * 6, "group": [f"g{i}" for i in range(26)]})
    pool, test = labelling_pool(table, seed=1)
    assert set(pool).isdisjoint(test) and len(pool) + len(test) == 26
    assert table.iloc[pool]["label"].value_counts().to_dict() == {"a": 10, "b": 3}
    picks = random_per_class(table, pool, k=5, seed=2)
    assert table.iloc[picks]["label"].value_counts().to_dict() == {"a": 5, "b": 3}  # capped at what b has
    assert set(picks) <= set(pool) and picks == random_per_class(table, pool, k=5, seed=2)


def test_the_domain_shift_warning_names_suggest_and_adapt():
    line = warning({"shift_far_share": 0.9, "shift_median_distance": 3.0}, 10)
    assert "bloodml suggest" in line and "bloodml adapt" in line


@pytest.mark.parametrize("protocol, message", [
    ("{type: few_shot, k: [0, 3]}", "needs target"),
    ("{type: few_shot, target: BCCD, k: [0, x]}", "not a list of whole numbers"),
    ("{type: few_shot, target: BCCD, selection: [best]}", "selection 'best' is unknown"),
    ("{type: few_shot, target: BCCD, repeats: 1}", "repeats >= 2"),
])
def test_few_shot_study_files_are_checked_in_one_line(tmp_path, protocol, message):
    from bloodml.errors import BloodmlError
    from bloodml.study.spec import load_study

    study = tmp_path / "s.yaml"
    protocol = protocol.replace("BCCD", str(REPO / "experiments/bccd.yaml"))
    study.write_text(f"run: {REPO / 'experiments/wbc.yaml'}\nprotocol: {protocol}\nfactors: {{adapt_strategy: "
                     f"[joint, head]}}\n")
    with pytest.raises(BloodmlError, match=message):
        load_study(study)
