"""More bad (and awkward but legitimate) inputs through the CLI. Errors: one line naming the item and the fix,
exit code 2, no traceback. Legitimate oddities (16-bit, palette, CMYK, BOM, CRLF, whitespace) just work."""

import hashlib
import os
import zipfile

import mlflow
import numpy as np
import pytest
from PIL import Image

from bloodml.config import build_config
from bloodml.tracking.runs import metric_keys
from bloodml.train import run_training
from clihelp import run_cli
from conftest import REPO, TINY_BACKBONE, cell_image, tiny_overrides

FAST = ["--backbone", TINY_BACKBONE, "--pretrained", "false", "--image_size", "32", "--epochs", "1",
        "--min_class_count", "2", "--near_duplicate_distance", "-1", "--gradcam_samples", "0", "--bootstrap", "100"]


def _fails(capsys, *args):
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in out + err
    return err


def _works(capsys, *args):
    code, out, err = run_cli(capsys, *args)
    assert code == 0, (out, err)
    return out


def _manifest(tmp_path, rows, header="image,label", name="m.csv", encoding="utf-8", text=None):
    root = tmp_path / "ds"
    root.mkdir(exist_ok=True)
    for i in range(12):
        Image.fromarray(cell_image("alpha" if i % 2 else "beta", i)[0]).save(root / f"c{i}.png")
    body = text if text is not None else "\n".join([header] + rows) + "\n"
    (root / name).write_bytes(body.encode(encoding) if isinstance(body, str) else body)
    return root / name


def _default_rows():
    return [f"c{i}.png,{'a' if i % 2 else 'b'}" for i in range(12)]


@pytest.mark.parametrize("mode", ["I;16", "P", "CMYK", "LA"])
def test_unusual_image_modes_are_read(make_wbc, capsys, mode):
    root = make_wbc(per_class=6)
    image = Image.open(root / "001.bmp")
    if mode == "I;16":
        grey = np.asarray(image.convert("L")).astype(np.uint16) * 257
        Image.fromarray(grey).save(root / "001.png.tmp.png")
        os.replace(root / "001.png.tmp.png", root / "001.bmp.png")
        (root / "001.bmp").unlink()
        Image.open(root / "001.bmp.png").save(root / "001.tif")
        (root / "001.bmp.png").unlink()
        os.replace(root / "001.tif", root / "001.bmp")  # 16-bit TIFF under the expected name
    elif mode == "CMYK":
        image.convert("CMYK").save(root / "001.jpg")
        os.replace(root / "001.jpg", root / "001.bmp")
    else:
        image.convert(mode).save(root / "001.png2.png")
        os.replace(root / "001.png2.png", root / "001.bmp")
    assert "12 images" in _works(capsys, "data", "inspect", "--data", root, "--min_class_count", "2")
    _works(capsys, "train", "--data", root, *FAST)


def test_decompression_bomb_guard(make_wbc, capsys):
    root = make_wbc(per_class=6)
    Image.new("L", (8000, 7000)).save(root / "003.bmp.png")
    os.replace(root / "003.bmp.png", root / "003.bmp")
    assert "003.bmp: 8000x7000 pixels is too large" in _fails(capsys, "train", "--data", root, *FAST)


def test_mask_with_unknown_codes(make_wbc, capsys):
    root = make_wbc(per_class=6)
    mask = np.asarray(Image.open(root / "002.png")).copy()
    mask[:5, :5] = 77
    mask[5:10, 5:10] = 200
    Image.fromarray(mask).save(root / "002.png")
    assert "002.png: mask codes" in _fails(capsys, "train", "--data", root, "--masks", "cell", *FAST)


def test_corrupt_mask(make_wbc, capsys):
    root = make_wbc(per_class=6)
    (root / "004.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    err = _fails(capsys, "train", "--data", root, "--masks", "cell", *FAST)
    assert "004.png: " in err and ("not a readable image" in err or "corrupt" in err)
    # several bad masks, whichever splits they fall in, and one with a foreign code: all named in the one line
    (root / "009.png").write_bytes(b"")
    mask = np.asarray(Image.open(root / "011.png")).copy()
    mask[2:12, 2:12] = 77
    Image.fromarray(mask).save(root / "011.png")
    err = _fails(capsys, "train", "--data", root, "--masks", "cell", *FAST)
    assert err.startswith("error: 3 images or masks cannot be used: ")
    assert all(f"{n}.png: " in err for n in ("004", "009", "011")) and "mask codes" in err


def test_duplicated_ids(make_wbc, capsys):
    root = make_wbc(per_class=6)
    csv = root / "labels.csv"
    csv.write_bytes(csv.read_bytes() + b"3,1\r\n")
    assert "image ID 3 is listed twice" in _fails(capsys, "train", "--data", root, *FAST)


def test_bom_crlf_and_whitespace_are_fine(tmp_path, capsys):
    rows = [f"  c{i}.png ,  {'a' if i % 2 else 'b'}  " for i in range(12)]
    text = "\ufeffimage , label\r\n" + "\r\n".join(rows) + "\r\n"
    path = _manifest(tmp_path, [], text=text)
    assert "12 images" in _works(capsys, "data", "inspect", "--data", path, "--min_class_count", "2")


def test_utf16_csv_as_excel_saves_unicode_text(tmp_path, capsys):
    rows = [f"c{i}.png\t{'a' if i % 2 else 'b'}" for i in range(12)]
    path = _manifest(tmp_path, [], text=("image\tlabel\r\n" + "\r\n".join(rows) + "\r\n").encode("utf-16"))
    assert path.read_bytes()[:2] == b"\xff\xfe"
    assert "12 images" in _works(capsys, "data", "inspect", "--data", path, "--min_class_count", "2")


def test_one_class_is_refused_without_advice_to_lower_min_class_count(tmp_path, capsys):
    path = _manifest(tmp_path, [f"c{i}.png,blast" for i in range(12)])
    err = _fails(capsys, "data", "inspect", "--data", path)
    assert "only one class in the labels (blast 12 images)" in err and "min_class_count" not in err


def test_non_utf8_csv(tmp_path, capsys):
    path = _manifest(tmp_path, [], text="image,label\nc1.png,lymphocyte \xe9\n".encode("latin-1"))
    assert "not UTF-8 text" in _fails(capsys, "data", "inspect", "--data", path)


def test_manifest_without_the_label_column(tmp_path, capsys):
    path = _manifest(tmp_path, _default_rows(), header="image,diagnosis")
    assert "no column 'label'" in _fails(capsys, "data", "inspect", "--data", path)
    assert "label_column=" in _fails(capsys, "data", "inspect", "--data", path)


def test_rows_without_a_label_are_left_out_and_named(tmp_path, capsys):
    rows = _default_rows()
    unlabelled = rows[:2] + [rows[2].split(",")[0] + ","]  # two images, then a third without its label
    path = _manifest(tmp_path, unlabelled + rows[3:] + [",", ""])  # and a blank spreadsheet row at the end
    out = _works(capsys, "data", "inspect", "--data", path, "--min_class_count", "2")
    assert f"{path}: left out 1 row(s) with an empty label (line 4); label them to use them" in out
    assert "11 images" in out
    path = _manifest(tmp_path, [row.split(",")[0] + "," for row in rows], name="none.csv")
    assert "none of its 12 rows has a label (lines 2, 3, 4, 5, 6, ...)" in _fails(
        capsys, "data", "inspect", "--data", path)


def test_path_escaping_with_dotdot(tmp_path, capsys):
    path = _manifest(tmp_path, _default_rows() + ["../../etc/passwd,a"])
    assert "points outside the data folder" in _fails(capsys, "data", "inspect", "--data", path)


def test_symlink_out_of_the_data_folder(make_folders, tmp_path, capsys):
    root = make_folders(per_class=4)
    outside = tmp_path / "secret.png"
    Image.fromarray(cell_image("alpha", 99)[0]).save(outside)
    (root / "alpha" / "link.png").symlink_to(outside)
    assert "points outside the data folder" in _fails(capsys, "data", "inspect", "--data", root)


def test_symlink_out_of_a_wbc_folder(make_wbc, tmp_path, capsys):
    root = make_wbc(per_class=4)
    outside = tmp_path / "elsewhere.bmp"
    os.replace(root / "002.bmp", outside)
    (root / "002.bmp").symlink_to(outside)
    assert "points outside the data folder" in _fails(capsys, "data", "inspect", "--data", root)


def test_zip_slip_through_the_cli(tmp_path, capsys):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("ok/a/x.png", b"")
        handle.writestr("../escape.png", b"")
    assert "zip-slip" in _fails(capsys, "data", "inspect", "--data", archive)


def test_not_a_zip(tmp_path, capsys):
    (tmp_path / "data.zip").write_text("plain text")
    assert "not a valid zip file" in _fails(capsys, "data", "inspect", "--data", tmp_path / "data.zip")


def test_empty_class_folder_is_ignored(make_folders, capsys):
    root = make_folders(per_class=4)
    (root / "delta").mkdir()
    out = _works(capsys, "data", "inspect", "--data", root, "--min_class_count", "2")
    assert "class delta" not in out and "class alpha" in out


def test_malformed_mask_codes(make_wbc, capsys):
    root = make_wbc(per_class=6)
    assert "mask_codes entry" in _fails(capsys, "train", "--data", root, "--masks", "cell", "--mask_codes",
                                        "0:background", *FAST)


def test_positive_class_that_does_not_exist(make_wbc, capsys):
    root = make_wbc(per_class=6)
    assert "positive_classes 'tumour' not found" in _fails(capsys, "data", "inspect", "--data", root,
                                                           "--positive_classes", "tumour")


def test_yaml_config_problems_through_the_cli(make_wbc, tmp_path, capsys):
    root = make_wbc(per_class=6)
    (tmp_path / "bad.yaml").write_text("epochs: [1,\n")
    assert "is not valid YAML" in _fails(capsys, "train", "--config", tmp_path / "bad.yaml", "--data", root)
    (tmp_path / "typo.yaml").write_text("epoch: 3\n")
    assert "did you mean 'epochs'" in _fails(capsys, "train", "--config", tmp_path / "typo.yaml", "--data", root)
    (tmp_path / "list.yaml").write_text("- epochs\n")
    assert "must be a mapping" in _fails(capsys, "train", "--config", tmp_path / "list.yaml", "--data", root)


def test_wrong_format_for_the_folder(make_folders, capsys):
    root = make_folders(per_class=4)
    assert "exactly one labels CSV" in _fails(capsys, "data", "inspect", "--data", root, "--format", "wbc")


def test_fractions_that_leave_nothing_to_train(make_wbc, capsys):
    root = make_wbc(per_class=6)
    assert "too little to train on" in _fails(capsys, "train", "--data", root, "--val_fraction", "0.5",
                                              "--test_fraction", "0.47", *FAST)


def test_wbc_layout_rows_without_a_label(make_wbc, capsys):
    root = make_wbc(per_class=5)
    text = (root / "labels.csv").read_bytes().replace(b"\r\n3,1\r\n", b"\r\n3,\r\n") + b",\r\n"
    (root / "labels.csv").write_bytes(text)
    out = _works(capsys, "data", "inspect", "--data", root, "--min_class_count", "2")
    assert "left out 1 row(s) with an empty label (line 4)" in out and "9 images" in out


def test_a_camera_rotated_image_is_read_as_shown_so_its_mask_lines_up(tmp_path):
    from bloodml.inputs.dataset import load_sample
    from bloodml.inputs.input_spec import InputSpec

    shown = np.full((64, 40, 3), 30, np.uint8)  # portrait as a viewer (and the annotation tool) shows it
    shown[:16] = 220  # the cell: the top band
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(shown)))  # as the phone wrote it: landscape ...
    exif = stored.getexif()
    exif[0x0112] = 6  # ... with "rotate 90 degrees clockwise to show"
    stored.save(tmp_path / "cell.png", exif=exif)
    mask = np.zeros((64, 40), np.uint8)
    mask[:16] = 255
    Image.fromarray(mask).save(tmp_path / "cell_mask.png")
    image, regions, found, _, _ = load_sample(str(tmp_path / "cell.png"), str(tmp_path / "cell_mask.png"),
                                              InputSpec(image_size=32, mask_mode="cell"))
    assert found and regions[:8].all() and not regions[9:].any()  # top quarter, resized to 32 x 32
    assert image[:, :8].float().mean() > 200 and image[:, 9:].float().mean() < 40  # the bright band under it


def test_class_names_mlflow_would_refuse_as_metric_names_still_train_and_log(make_folders):
    """Per-class metrics carry the class names; MLflow refuses brackets, commas and '+' in metric names, which used
    to end a finished training run in an error before its metrics and model were logged."""
    root = make_folders(per_class=6)
    for plain, odd in zip(("alpha", "beta", "gamma"), ("T-Zelle (CD3+)", "seg, band", "Blast ä")):
        (root / plain).rename(root / odd)
        (root / "masks" / plain).rename(root / "masks" / odd)
    result = run_training(build_config(None, tiny_overrides(root, gradcam_samples=0, epochs=2)))
    logged = mlflow.MlflowClient().get_run(result.run_id).data.metrics
    assert logged["test_recall_T-Zelle _CD3__"] == result.metrics["test_recall_T-Zelle (CD3+)"]
    assert "test_recall_seg_ band" in logged and "test_recall_Blast ä" in logged  # accented letters are kept
    keys = metric_keys(["p(1)", "p,1)", "a/../b", "/x"])
    assert keys["p(1)"] == "p_1_" and keys["p,1)"] == "p_1__" + hashlib.sha256(b"p,1)").hexdigest()[:8]  # apart
    assert keys["a/../b"] == "a____b" and keys["/x"] == "_x"  # no path tricks


def test_run_parameters_written_as_name_value_get_the_command_with_options(capsys):
    code, out, err = run_cli(capsys, "train", "data=my cells", "epochs=3", "stray")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "options are written --name value: --data 'my cells' --epochs 3" in err


def test_every_image_a_copy_under_another_label_is_named_not_a_split_error(tmp_path, capsys):
    for label in ("a", "b"):
        (tmp_path / "blank" / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "blank" / label / f"{label}{i}.png")
    err = _fails(capsys, "train", "--data", tmp_path / "blank", *FAST)
    assert "each of the 12 images has a copy under another label (a0.png, a1.png, a2.png ...)" in err
    assert "stratify" not in err


def test_a_config_made_for_another_dataset_is_named_when_its_layout_does_not_fit(make_folders, capsys):
    """`mlflow run . -P data=<my folder>` keeps the default config, experiments/wbc.yaml (format=wbc): the error
    says the folder's own layout and how to drop the config, instead of advising a manifest."""
    root = make_folders(per_class=4)
    err = _fails(capsys, "train", "--config", REPO / "experiments/wbc.yaml", "--data", root)
    assert "the wbc format needs exactly one labels CSV" in err
    assert "but this data looks like the folders layout" in err and "-P config=" in err and "format=auto" in err
    err = _fails(capsys, "train", "--config", REPO / "experiments/allidb2.yaml", "--data", root, "--format", "auto")
    assert "mapping.csv: CSV not found" in err  # was a FileNotFoundError 'please report it'


def test_an_output_place_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    before = sorted(tmp_path.rglob("*"))
    # the model reference is not even looked up: the output is checked first
    err = _fails(capsys, "predict", "-m", "no-such-model", tmp_path, "-o", blocker / "p.csv")
    assert err.startswith(f"error: -o {blocker / 'p.csv'}: cannot write in {blocker}")
    err = _fails(capsys, "study", "--config", REPO / "experiments/wbc_study_offline.yaml", "--out", blocker / "report")
    assert f"--out {blocker / 'report'}: cannot write in {blocker}" in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing was started or left behind
