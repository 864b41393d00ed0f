"""Bad input through the CLI: one line naming the file or value and the fix, exit code 2, no traceback."""

import re
import shutil

import pytest
from PIL import Image

from clihelp import run_cli
from conftest import TINY_BACKBONE


def _train(capsys, data, *extra):
    code, out, err = run_cli(capsys, "train", "--data", data, "--backbone", TINY_BACKBONE, "--pretrained", "false",
                             "--image_size", "32", "--epochs", "1", "--min_class_count", "2",
                             "--near_duplicate_distance", "-1", *extra)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err + out
    return err


def test_row_whose_image_is_missing(make_wbc, capsys):
    root = make_wbc(per_class=5)
    (root / "003.bmp").unlink()
    assert "labels.csv:4: no image file for ID 3" in _train(capsys, root)


def test_corrupt_image(make_wbc, capsys):
    root = make_wbc(per_class=5)
    data = (root / "004.bmp").read_bytes()
    (root / "004.bmp").write_bytes(data[: len(data) // 3])
    assert "004.bmp: corrupt or truncated image" in _train(capsys, root)


def test_text_file_with_an_image_extension(make_wbc, capsys):
    root = make_wbc(per_class=5)
    (root / "005.bmp").write_text("not an image")
    assert "005.bmp: not a readable image" in _train(capsys, root)


def test_zero_byte_image(make_wbc, capsys):
    root = make_wbc(per_class=5)
    (root / "006.bmp").write_bytes(b"")
    assert "006.bmp: empty file" in _train(capsys, root)


def test_every_unreadable_image_is_named_in_one_line(make_wbc, capsys):
    """Four broken files: one line says how many, names the first three with their reasons, and counts the rest,
    so the user fixes them all before the next attempt."""
    root = make_wbc(per_class=5)
    data = (root / "004.bmp").read_bytes()
    (root / "004.bmp").write_bytes(data[: len(data) // 3])
    (root / "005.bmp").write_text("not an image")
    (root / "006.bmp").write_bytes(b"")
    (root / "007.bmp").write_bytes(b"")
    err = _train(capsys, root)
    assert "4 images cannot be read: " in err and "and 1 more; replace them or remove them" in err
    assert "004.bmp: corrupt or truncated image" in err and "005.bmp: not a readable image" in err
    assert "006.bmp: empty file (0 bytes)" in err and "007.bmp" not in err


def test_mask_that_cannot_match_its_image(make_wbc, capsys):
    root = make_wbc(per_class=5)
    Image.new("L", (60, 10)).save(root / "002.png")
    assert "002.png: mask is 60x10 but its image is 24x24" in _train(capsys, root, "--masks", "cell")


def test_unknown_label_value(make_wbc, capsys):
    root = make_wbc(per_class=5)
    csv = root / "labels.csv"
    csv.write_bytes(csv.read_bytes().replace(b"\r\n10,2", b"\r\n10,8"))
    assert "unknown label '8'" in _train(capsys, root)


def test_empty_dataset(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "cannot tell the dataset layout" in _train(capsys, tmp_path / "empty")


def test_missing_data_folder(tmp_path, capsys):
    assert "no such file or folder" in _train(capsys, tmp_path / "nowhere")


def test_class_too_small_for_the_split(make_wbc, capsys):
    root = make_wbc(per_class=2)
    assert "too few for one in each of train/val/test" in _train(capsys, root)


def test_unknown_backbone(make_wbc, capsys):
    root = make_wbc(per_class=6)
    code, out, err = run_cli(capsys, "train", "--data", root, "--backbone", "resnet5000", "--min_class_count", "2",
                             "--near_duplicate_distance", "-1", "--image_size", "32")
    assert code == 2 and "backbone='resnet5000' is unknown" in err and err.count("\n") == 1


def test_masks_requested_but_absent(make_folders, capsys):
    root = make_folders(per_class=6)
    shutil.rmtree(root / "masks")
    assert re.search(r"no mask found \((\d+) of \1 images lack one; up to 5% would be left out\)",
                     _train(capsys, root, "--masks", "cell"))


def test_a_straggler_without_a_mask_is_left_out(make_folders, capsys):
    root = make_folders(per_class=14)
    (root / "masks" / "beta" / "cell3.png").unlink()  # 1 of 42 (2.4 %): left out, named
    code, out, err = run_cli(capsys, "train", "--data", root, "--masks_dir", "masks", "--masks", "cell",
                             "--backbone", TINY_BACKBONE, "--pretrained", "false", "--image_size", "32", "--epochs",
                             "1", "--min_class_count", "2", "--near_duplicate_distance", "-1", "--gradcam_samples", "0")
    assert code == 0, err
    assert ("note: left out 1 of 42 images without a mask, since masks=cell needs one: cell3.png; add their masks"
            in out) and "data: 41 images" in out
    for name in ("cell4.png", "cell5.png"):  # 3 of 42 (7.1 %): refused
        (root / "masks" / "beta" / name).unlink()
    assert "no mask found (3 of 42 images lack one" in _train(capsys, root, "--masks_dir", "masks", "--masks", "cell")


@pytest.mark.parametrize("option, value, fragment", [
    ("--epochs", "0", "epochs=0 is out of range"),
    ("--batch_size", "-3", "batch_size=-3 is out of range"),
    ("--lr", "abc", "lr='abc' is not a valid float"),
    ("--image-size", "100000", "image_size=100000 is out of range"),
])
def test_absurd_parameters(make_wbc, capsys, option, value, fragment):
    root = make_wbc(per_class=3)
    assert fragment in _train(capsys, root, option, value)


def test_masks_that_mark_no_cell(make_folders, capsys):
    import numpy as np

    root = make_folders(per_class=6)
    masks = sorted((root / "masks").rglob("*.png"))
    blank = np.zeros_like(np.asarray(Image.open(masks[0])))
    for mask in masks[:2]:  # two of eighteen: trained, with a note naming them
        Image.fromarray(blank).save(mask)
    code, out, err = run_cli(capsys, "train", "--data", root, "--masks_dir", "masks", "--masks", "cell",
                             "--backbone", TINY_BACKBONE, "--pretrained", "false", "--image_size", "32", "--epochs",
                             "1", "--min_class_count", "2", "--near_duplicate_distance", "-1", "--gradcam_samples", "0")
    assert code == 0, err
    note = next(line for line in out.splitlines() if "mark no cell" in line)
    assert note.startswith("note: 2 of 18 masks mark no cell, so masks=cell") and all(str(m) in note for m in masks[:2])
    for mask in masks:  # every one: refused
        Image.fromarray(blank).save(mask)
    err = _train(capsys, root, "--masks_dir", "masks", "--masks", "crop_cell")
    assert "no mask marks a cell (all 18 are background only)" in err
