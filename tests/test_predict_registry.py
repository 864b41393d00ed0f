import os
import subprocess
import sys
import zipfile

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bloodml.config import build_config
from bloodml.train import run_training
from clihelp import run_cli
from conftest import ALLIDB2, REPO, needs_allidb2, tiny_overrides

LOAD_BY_ALIAS = """
import sys, mlflow, numpy as np
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/cells@champion")
p = model.predict(np.full((2, 3, 32, 32), 0.5, dtype=np.float32))
print(model.metadata.run_id, p.shape, round(float(p.sum()), 4))
"""


@needs_allidb2
def test_predict_matches_training_probabilities(tmp_path, capsys):
    config = build_config(REPO / "experiments/allidb2.yaml", {"data": str(ALLIDB2), "epochs": 2, "aug_views": 1,
                                                               "gradcam_samples": 0, "bootstrap": 100})
    result = run_training(config)
    trained = pd.concat([pd.read_csv(mlflow.MlflowClient().download_artifacts(
        result.run_id, f"evaluation/predictions_{s}.csv", str(tmp_path))) for s in ("val", "test")])
    folder = ALLIDB2 / "images_lowres_VallHere" / "Kelas 1"
    out = tmp_path / "predictions.csv"
    code, stdout, stderr = run_cli(capsys, "predict", "-m", result.run_id, folder, "-o", out)
    assert code == 0, stderr
    predicted = pd.read_csv(out)
    assert len(predicted) == 130 and set(predicted["predicted_label"]) <= {"blast_ALL", "normal"}
    merged = trained.assign(name=trained["file"].map(lambda p: p.split("/")[-1])).merge(
        predicted.assign(name=predicted["file"].map(lambda p: p.split("/")[-1])), on="name", suffixes=("_t", "_p"))
    assert len(merged) >= 20  # the blasts that landed in validation or test
    for cls in ("blast_ALL", "normal"):
        assert np.allclose(merged[f"p_{cls}_t"], merged[f"p_{cls}_p"], atol=1e-5)


def test_registered_model_is_loaded_by_alias_in_another_process(make_wbc, capsys):
    result = run_training(build_config(None, tiny_overrides(make_wbc(per_class=8), epochs=1, gradcam_samples=0)))
    code, out, err = run_cli(capsys, "register", result.run_id, "--name", "cells")
    assert code == 0 and "models:/cells@champion" in out, err
    done = subprocess.run([sys.executable, "-c", LOAD_BY_ALIAS, mlflow.get_tracking_uri()], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run_id, shape, total = done.stdout.split()[-4:-2][0], done.stdout.split()[-3] + done.stdout.split()[-2], done.stdout.split()[-1]
    assert run_id == result.run_id and shape == "(2,2)" and total == "2.0"


FRESH_SHELL = """
import sys, mlflow
from bloodml.serving.image_model import image_model_uri
from bloodml.tracking.registry import register
mlflow.set_tracking_uri(sys.argv[1])
print(image_model_uri(sys.argv[2]))
version = register(sys.argv[2], "cells-elsewhere")
print(mlflow.MlflowClient().get_model_version("cells-elsewhere", version).source)
"""


def test_a_later_command_finds_the_models_of_a_run_in_any_experiment(make_wbc):
    """`bloodml serve -m <run>` and `bloodml register <run>` typed in a new shell: no active experiment there (in a
    test, training's set_experiment leaks MLFLOW_EXPERIMENT_ID into child processes, so it is removed). MLflow looks
    for logged models in the active experiment only; serve used to answer 'run ... has no image_model'."""
    result = run_training(build_config(None, tiny_overrides(make_wbc(per_class=5), experiment="elsewhere", epochs=1,
                                                             gradcam_samples=0)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_EXPERIMENT")}
    done = subprocess.run([sys.executable, "-c", FRESH_SHELL, mlflow.get_tracking_uri(), result.run_id],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    served, registered = done.stdout.split()[-2:]
    assert served == f"runs:/{result.run_id}/image_model"
    assert registered.startswith("models:/m-")  # the logged model itself, not the run's empty 'model' path
    assert "has no artifacts" not in done.stderr


def test_predict_needs_masks_for_a_masked_model(make_folders, tmp_path, capsys):
    root = make_folders(per_class=8)
    result = run_training(build_config(None, tiny_overrides(root, masks="cell", masks_dir="masks", epochs=1,
                                                             gradcam_samples=0)))
    capsys.readouterr()  # training's own lines
    code, _, err = run_cli(capsys, "predict", "-m", result.run_id, root / "alpha", "-o", tmp_path / "p.csv")
    assert code == 2 and "needs each image's mask; pass --masks-dir" in err and err.count("\n") == 1
    code, out, err = run_cli(capsys, "predict", "-m", result.run_id, root / "alpha", "--masks-dir", root / "masks",
                             "-o", tmp_path / "p.csv")
    assert code == 0 and len(pd.read_csv(tmp_path / "p.csv")) == 8, err
    everything = pd.read_csv(tmp_path / "p.csv")
    assert "mark no cell" not in out
    # the whole dataset folder, masks/ beside the class folders and no --masks-dir: taken as training takes it
    code, out, err = run_cli(capsys, "predict", "-m", result.run_id, root, "-o", tmp_path / "all.csv")
    assert code == 0, err
    assert f"took {root / 'masks'} as --masks-dir: its sub-folders mirror the class folders" in out
    whole = pd.read_csv(tmp_path / "all.csv")
    assert len(whole) == 24 and not whole["file"].str.contains("/masks/").any()
    pd.testing.assert_frame_equal(whole[whole["file"].isin(everything["file"])].reset_index(drop=True), everything)
    blank = sorted((root / "masks" / "alpha").iterdir())[-1]  # a mask that marks no cell: predicted, and named
    kept = blank.read_bytes()
    Image.fromarray(np.zeros_like(np.asarray(Image.open(blank)))).save(blank)
    code, out, err = run_cli(capsys, "predict", "-m", result.run_id, root / "alpha", "--masks-dir", root / "masks",
                             "-o", tmp_path / "pb.csv")
    assert code == 0 and len(pd.read_csv(tmp_path / "pb.csv")) == 8, err
    assert "note: 1 of 8 masks mark no cell, so the model (masks=cell) saw nothing of those cells" in out
    assert str(blank) in out
    blank.write_bytes(kept)
    # one image without its mask among eight (BCCD has one): the other seven are predicted as before, it is named
    lost = sorted((root / "masks" / "alpha").iterdir())[0]
    lost.unlink()
    code, out, err = run_cli(capsys, "predict", "-m", result.run_id, root / "alpha", "--masks-dir", root / "masks",
                             "-o", tmp_path / "p7.csv")
    assert code == 0, err
    rest = pd.read_csv(tmp_path / "p7.csv")
    assert len(rest) == 7 and not rest["file"].str.contains(f"/{lost.stem}\\.").any()
    assert "left out 1 of 8 image(s) without a mask" in out and f"{lost.stem}." in out
    pd.testing.assert_frame_equal(rest, everything[everything["file"].isin(rest["file"])].reset_index(drop=True))
    for mask in (root / "masks" / "alpha").iterdir():  # none left: refused with one line
        mask.unlink()
    code, _, err = run_cli(capsys, "predict", "-m", result.run_id, root / "alpha", "--masks-dir", root / "masks")
    assert code == 2 and "none of the 8 images has one in" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "predict", "-m", "models:/nothing@champion", root / "alpha")
    assert code == 2 and "could not be loaded" in err


def test_tampered_model_files_are_refused(make_wbc, tmp_path, capsys):
    from pathlib import Path

    result = run_training(build_config(None, tiny_overrides(make_wbc(per_class=8), epochs=1, gradcam_samples=0)))
    images = tmp_path / "wbc_synth"
    code, out, err = run_cli(capsys, "predict", "-m", result.run_id, images, "-o", tmp_path / "p.csv",
                             "--pattern", "*.bmp")
    assert code == 0, err  # the untouched model loads and predicts
    assert len(pd.read_csv(tmp_path / "p.csv")) == 16  # the images, not the masks beside them
    # the tensor model's file, not the copy inside the served image_model (its artifacts/artifacts/...)
    stored = [p for p in Path.cwd().rglob("model.pt2") if p.parts.count("artifacts") == 1]
    assert len(stored) == 1
    raw = bytearray(stored[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    stored[0].write_bytes(bytes(raw))
    code, out, err = run_cli(capsys, "predict", "-m", result.run_id, images, "-o", tmp_path / "p.csv")
    assert code == 2 and "SHA-256 mismatch" in err


def test_predict_finds_each_images_own_mask_by_sub_path(make_folders, tmp_path, capsys):
    """Class folders hold files of the same name (alpha/cell0.png, beta/cell0.png): each image gets its own mask
    (masks/beta/cell0.png, never masks/alpha/cell0.png), so predict reproduces training's probabilities."""
    root = make_folders(per_class=10)
    result = run_training(build_config(None, tiny_overrides(root, masks="cell", masks_dir="masks", epochs=2,
                                                             gradcam_samples=0)))
    trained = pd.concat([pd.read_csv(mlflow.MlflowClient().download_artifacts(
        result.run_id, f"evaluation/predictions_{s}.csv", str(tmp_path))) for s in ("val", "test")])
    # the masks differ per class, so a borrowed mask would change the probabilities
    out = tmp_path / "predictions.csv"
    code, stdout, stderr = run_cli(capsys, "predict", "-m", result.run_id, root, "--masks-dir", root / "masks",
                                   "-o", out)
    assert code == 0, stderr
    predicted = pd.read_csv(out)
    assert len(predicted) == 30  # the images only: the masks folder inside the input folder is not predicted
    key = lambda p: "/".join(str(p).split("/")[-2:])  # noqa: E731  class/file
    merged = trained.assign(key=trained["file"].map(key)).merge(predicted.assign(key=predicted["file"].map(key)),
                                                                on="key", suffixes=("_t", "_p"))
    assert len(merged) == len(trained)  # every validation/test image shares its file name with 2 other classes
    for cls in ("alpha", "beta", "gamma"):
        assert np.allclose(merged[f"p_{cls}_t"], merged[f"p_{cls}_p"], atol=1e-5)

    # the same dataset as a zip: read as the folder it holds (its masks folder found beside the classes)
    archive = tmp_path / "cells.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in root.rglob("*.png"):
            handle.write(path, path.relative_to(root.parent))
    (tmp_path / "zipped").mkdir()  # -o naming a folder: predictions.csv in it
    code, stdout, stderr = run_cli(capsys, "predict", "-m", result.run_id, archive, "-o", tmp_path / "zipped")
    assert code == 0, stderr
    zipped = pd.read_csv(tmp_path / "zipped" / "predictions.csv")
    both = predicted.assign(key=predicted["file"].map(key)).merge(zipped.assign(key=zipped["file"].map(key)),
                                                                  on="key", suffixes=("", "_zip"))
    assert len(zipped) == len(both) == 30
    for cls in ("alpha", "beta", "gamma"):
        assert np.allclose(both[f"p_{cls}"], both[f"p_{cls}_zip"], atol=1e-6)


def test_mask_lookup_prefers_the_longest_matching_sub_path(tmp_path):
    from bloodml.data.masks import find_mask

    for name in ("masks/alpha/cell0.png", "masks/beta/cell0.tif", "masks/cell0.png", "images/beta/cell0.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert find_mask(tmp_path / "images/beta/cell0.png", tmp_path / "masks") == tmp_path / "masks/beta/cell0.tif"
    assert find_mask(tmp_path / "elsewhere/cell0.png", tmp_path / "masks") == tmp_path / "masks/cell0.png"
    assert find_mask(tmp_path / "images/beta/cell1.png", tmp_path / "masks") is None
    assert find_mask(tmp_path / "images/beta/cell0.png", tmp_path / "images") is None  # never the image itself


def test_predict_leaves_out_unreadable_images_and_says_which(make_folders, tmp_path, capsys):
    """A folder with two broken files among readable ones: the readable ones are predicted as they would be
    alone, one line names the two left out; a folder of broken files only is refused in one line."""
    root = make_folders(per_class=8)
    result = run_training(build_config(None, tiny_overrides(root, epochs=1, gradcam_samples=0, masks_dir="masks")))
    clean, broken = tmp_path / "clean.csv", tmp_path / "broken.csv"
    assert run_cli(capsys, "predict", "-m", result.run_id, root / "alpha", "-o", clean)[0] == 0
    (root / "alpha" / "bad.png").write_text("not an image")
    (root / "alpha" / "empty.png").write_bytes(b"")
    code, stdout, stderr = run_cli(capsys, "predict", "-m", result.run_id, root / "alpha", "-o", broken)
    assert code == 0, stderr
    assert "left out 2 unreadable image(s), not in the predictions: " in stdout + stderr
    assert "bad.png: not a readable image" in stdout + stderr and "empty.png: empty file" in stdout + stderr
    pd.testing.assert_frame_equal(pd.read_csv(clean), pd.read_csv(broken))
    only = tmp_path / "only"
    only.mkdir()
    (only / "bad.png").write_text("not an image")
    (only / "empty.png").write_bytes(b"")
    code, stdout, stderr = run_cli(capsys, "predict", "-m", result.run_id, only, "-o", tmp_path / "none.csv")
    assert code == 2 and "none of the 2 images can be read, e.g. " in stderr and stderr.count("\n") == 1


def test_predict_reads_a_listing_csv_as_training_reads_a_manifest(make_folders, tmp_path, capsys):
    """A listing written by a European spreadsheet on Windows: BOM, semicolons, an 'Image' header, backslash
    paths. predict reads it as training would and gives the predictions of the same files passed directly."""
    root = make_folders(per_class=8)
    result = run_training(build_config(None, tiny_overrides(root, epochs=1, gradcam_samples=0, masks_dir="masks")))
    names = sorted(p.name for p in (root / "alpha").iterdir())
    (root / "list.csv").write_text("\ufeff Image ;Patient\r\n" + "".join(f"alpha\\{n};p{i % 2}\r\n"
                                                                        for i, n in enumerate(names)), encoding="utf-8")
    direct, listed = tmp_path / "direct.csv", tmp_path / "listed.csv"
    assert run_cli(capsys, "predict", "-m", result.run_id, root / "alpha", "-o", direct)[0] == 0
    code, _, stderr = run_cli(capsys, "predict", "-m", result.run_id, root / "list.csv", "-o", listed)
    assert code == 0, stderr
    ours, theirs = pd.read_csv(listed), pd.read_csv(direct)
    assert len(ours) == len(names) == 8
    pd.testing.assert_frame_equal(ours.drop(columns="file"), theirs.drop(columns="file"))


def test_nothing_to_predict_says_what_was_looked_for(make_folders):
    from bloodml.errors import BloodmlError
    from bloodml.predict import collect_images

    root = make_folders(per_class=2)
    assert len(collect_images([root / "alpha"], "*.png")) == 2
    with pytest.raises(BloodmlError, match=r"^no images matching --pattern '\*\.bmp' found in .*alpha \(\.bmp, .*\); "
                                           r"pass image files or folders, or another --pattern\.$"):
        collect_images([root / "alpha"], "*.bmp")
    (root / "empty").mkdir()
    with pytest.raises(BloodmlError, match=r"^no images found in .*empty \(.*\); pass image files or folders\.$"):
        collect_images([root / "empty"])
