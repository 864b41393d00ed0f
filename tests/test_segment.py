"""Issue 13: a segmenter learnt from expert masks, used where a mask is missing; crop-to-cell inputs."""

import io
import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bloodml.config import build_config
from bloodml.inputs.input_spec import InputSpec
from bloodml.data.masks import crop_box
from bloodml.inputs.dataset import preload
from bloodml.splitting.prepare import prepare
from bloodml.errors import BloodmlError
from bloodml.segment import run_segment
from bloodml.segmentation.network import full_size, to_input
from bloodml.segmentation.scores import overlap, per_image, summarise
from bloodml.segmentation.source import segmenter_for
from bloodml.train import run_training
from clihelp import run_cli
from conftest import tiny_overrides


def test_dice_and_iou_against_hand_computed_cases():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[:2, :3] = True  # 6 pixels, 4 shared
    dice, iou = overlap(a, b)
    assert dice == pytest.approx(2 * 4 / 10) and iou == pytest.approx(4 / 6)
    assert overlap(a, a) == (1.0, 1.0)
    assert overlap(np.zeros((3, 3)), np.zeros((3, 3))) == (1.0, 1.0)  # both empty: agreement
    assert overlap(a, np.zeros((4, 4))) == (0.0, 0.0)
    predicted = np.array([[[0, 1], [2, 2]]])  # background, cytoplasm / nucleus, nucleus
    expert = np.array([[[0, 2], [2, 0]]])
    scores = per_image(predicted, expert)
    assert scores["cell_dice"][0] == pytest.approx(2 * 2 / 5)  # cell: 3 predicted, 2 expert, 2 shared
    assert scores["nucleus_dice"][0] == pytest.approx(2 * 1 / 4)  # nucleus: 2 predicted, 2 expert, 1 shared
    summary = summarise({"cell_dice": np.array([0.5, 1.0])}, n_boot=200)
    assert summary["cell_dice"] == 0.75 and 0.5 <= summary["cell_dice_ci_low"] <= summary["cell_dice_ci_high"] <= 1


def test_crop_box_squares_the_cell_with_a_margin_inside_the_image():
    regions = np.zeros((100, 80), np.uint8)
    regions[40:60, 30:40] = 1  # 20 x 10 box
    top, left, side = crop_box(regions, 0.1)
    assert side == 24 and top == 38 and left == 23  # 20 + 2 x 2 around the centre (50, 35)
    regions[:] = 0
    regions[0:10, 70:80] = 2  # in the corner: the square is moved inside
    top, left, side = crop_box(regions, 0.5)
    assert (top, left, side) == (0, 60, 20)
    assert crop_box(np.zeros((5, 5), np.uint8), 0.1) is None


@pytest.fixture
def segmenter_run(make_wbc):
    root = make_wbc(per_class=8)
    config = build_config(None, tiny_overrides(root, epochs=2, batch_size=4, lr=0.01, bootstrap=100))
    return root, run_segment(config)


def test_segment_logs_dice_with_intervals_gallery_and_a_model_that_loads_in_a_new_process(segmenter_run, tmp_path):
    import mlflow

    root, result = segmenter_run
    run = mlflow.MlflowClient().get_run(result.run_id)
    for region in ("cell", "nucleus"):
        value = run.data.metrics[f"test_{region}_dice"]
        assert run.data.metrics[f"test_{region}_dice_ci_low"] <= value <= run.data.metrics[f"test_{region}_dice_ci_high"]
    assert run.data.tags["bloodml.kind"] == "segment" and "val_cell_dice" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "evaluation")}
    assert "evaluation/overlay_gallery.png" in artifacts
    # the same masks to the pixel: in memory here, and loaded from the store in a fresh process
    image = np.asarray(Image.open(next(root.glob("*.bmp"))).convert("RGB"))
    with torch.no_grad():
        here = full_size(result.model.eval()(to_input(image, 32)).argmax(1)[0].numpy().astype(np.uint8), image.shape[:2])
    np.save(tmp_path / "image.npy", image)
    code = (f"import numpy as np; from bloodml.segmentation.source import loaded_segmenter; "
            f"s = loaded_segmenter('runs:/{result.run_id}/segmenter'); "
            f"np.save(r'{tmp_path / 'there.npy'}', s(np.load(r'{tmp_path / 'image.npy'}')))")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert np.array_equal(np.load(tmp_path / "there.npy"), here)


def test_segment_logs_the_augmentation_it_ran_and_only_the_parameters_it_reads(segmenter_run, capsys):
    """What is logged is what ran: the segmenter's own augmentation (rotation 180, ...), not the run configuration's
    augmentation values (rotation 90, aug_*), which it never used; and `segment` takes no option it ignores."""
    import mlflow

    from bloodml.config import command_parameters
    from bloodml.segment import SEGMENT_AUGMENTATION

    _, result = segmenter_run
    params = mlflow.MlflowClient().get_run(result.run_id).data.params
    assert params["rotation"] == "180.0" and params["zoom"] == "0.1" and params["shear"] == "0.0"
    assert params["hflip"] == "true" and SEGMENT_AUGMENTATION.rotation == 180.0
    assert not any(name.startswith("aug_") or name in ("augment", "masks", "finetune", "dropout") for name in params)
    assert params["epochs"] == "2" and set(command_parameters("segment")) <= set(params)
    code, _, err = run_cli(capsys, "segment", "--data", "x", "--aug_hed", "0.1")
    assert code == 2 and "No such option" in err and "--aug_hed" in err


def test_masks_from_auto_takes_the_expert_mask_where_there_is_one_else_the_segmenter(segmenter_run):
    root, result = segmenter_run
    missing = sorted(root.glob("*.png"))[:3]
    expert_maps = {}
    for mask in missing:  # the first three images lose their mask files
        mask.rename(mask.with_suffix(".hidden"))
    uri = f"runs:/{result.run_id}/segmenter"
    config = build_config(None, tiny_overrides(root, masks="cell", masks_from="auto", segmenter=uri))
    data = prepare(config, progress=False)
    spec = InputSpec.from_config(config)
    segmenter = segmenter_for(spec)
    loaded = preload(data.table, data.classes, spec, progress=False, segmenter=segmenter)
    expert_only = InputSpec(image_size=32, mask_mode="cell")
    for i, (path, mask) in enumerate(zip(data.table["path"], data.table["mask_path"])):
        if isinstance(mask, str):
            assert not loaded.segmented[i]
            expert_maps[path] = preload(data.table.iloc[[i]], data.classes, expert_only, progress=False).regions[0]
            assert torch.equal(loaded.regions[i], expert_maps[path])
        else:
            assert loaded.segmented[i]
            rgb = np.asarray(Image.open(path).convert("RGB"))
            drawn = np.asarray(Image.fromarray(segmenter(rgb)).resize((32, 32), Image.NEAREST))
            assert np.array_equal(loaded.regions[i].numpy(), drawn)
    assert int(loaded.segmented.sum()) == 3


def test_a_classifier_with_segmenter_masks_predicts_images_that_have_no_mask(segmenter_run, tmp_path, capsys):
    root, result = segmenter_run
    uri = f"runs:/{result.run_id}/segmenter"
    trained = run_training(build_config(None, tiny_overrides(root, masks="crop_cell", masks_from="auto", segmenter=uri,
                                                             gradcam_samples=2)))
    new = tmp_path / "new_images"
    new.mkdir()
    for image in sorted(root.glob("*.bmp"))[:4]:  # no mask files beside them
        (new / image.name).write_bytes(image.read_bytes())
    code, out, err = run_cli(capsys, "predict", "-m", trained.run_id, new, "-o", tmp_path / "p.csv")
    assert code == 0, err
    code, out, err = run_cli(capsys, "predict", "-m", trained.run_id, new, "-o", tmp_path / "p.csv",
                             "--masks-from", "expert")
    assert code == 0, err  # the model's own segmenter still draws what is missing
    predicted = pd.read_csv(tmp_path / "p.csv")

    # The served image-in model carries the segmenter: it answers the same from its own folder, in a new process
    # whose tracking store is empty (nothing to fetch the segmenter from).
    folder = mlflow.artifacts.download_artifacts(f"runs:/{trained.run_id}/image_model", dst_path=str(tmp_path / "m"))
    files = [str(p) for p in sorted(new.glob("*.bmp"))]
    answer = subprocess.run([sys.executable, "-c", SERVE_FROM_FOLDER, folder, *files], capture_output=True, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}"},
                            timeout=300)
    assert answer.returncode == 0, answer.stderr
    served = pd.read_json(io.StringIO(answer.stdout))
    assert list(served["label"]) == list(predicted["predicted_label"])
    columns = [c for c in predicted.columns if c.startswith("p_")]
    assert np.allclose(served[columns], predicted[columns], atol=1e-5)


SERVE_FROM_FOLDER = """
import sys, mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
print(model.predict(pd.DataFrame({"image": [open(f, "rb").read() for f in sys.argv[2:]]})).to_json())
"""


def test_a_classifier_or_the_wrong_regions_are_refused_as_a_segmenter(make_wbc, segmenter_run, capsys):
    root, result = segmenter_run
    classifier = run_training(build_config(None, tiny_overrides(root, epochs=1, gradcam_samples=0)))
    code, _, err = run_cli(capsys, "train", "--data", root, "--backbone", "test_efficientnet", "--pretrained", "false",
                           "--image_size", "32", "--near_duplicate_distance", "-1", "--masks", "cell",
                           "--masks_from", f"model:runs:/{classifier.run_id}/model")
    assert code == 2 and "is a classifier, not a segmenter" in err and "Traceback" not in err
    binary = make_wbc(per_class=6, name="binary_masks")
    for mask in binary.glob("*.png"):  # cell / background only: no nucleus
        array = np.asarray(Image.open(mask))
        Image.fromarray(np.where(array > 0, 255, 0).astype(np.uint8)).save(mask)
    no_nucleus = run_segment(build_config(None, tiny_overrides(binary, epochs=1, batch_size=4, bootstrap=100)))
    with pytest.raises(BloodmlError, match="trained on masks with the regions background, cytoplasm; masks=nucleus"):
        segmenter_for(InputSpec(image_size=32, mask_mode="nucleus", masks_from="model",
                                segmenter=f"runs:/{no_nucleus.run_id}/segmenter"))
    code, _, err = run_cli(capsys, "train", "--data", root, "--masks", "cell", "--masks_from", "auto")
    assert code == 2 and "masks_from=auto needs a segmenter" in err


def test_one_cell_drops_a_bridged_neighbour_and_specks_keeps_lobes_and_fills_holes():
    from bloodml.segmentation.cleanup import one_cell

    yy, xx = np.mgrid[:64, :64]
    regions = np.zeros((64, 64), np.uint8)
    regions[(yy - 36) ** 2 + (xx - 30) ** 2 <= 12 ** 2] = 1  # the cell's cytoplasm
    regions[(yy - 36) ** 2 + (xx - 30) ** 2 <= 5 ** 2] = 2  # its nucleus
    regions[36, 38] = 0  # a hole in the cytoplasm
    regions[(yy - 0) ** 2 + (xx - 30) ** 2 <= 8 ** 2] = 1  # a neighbour cut by the top border...
    regions[7:25, 30] = 1  # ...joined to the cell by a one-pixel bridge
    lobe = (yy - 36) ** 2 + (xx - 52) ** 2 <= 3 ** 2
    regions[lobe] = 2  # a nucleus lobe apart from the cell (faint cytoplasm between)
    regions[60, 5] = 2  # a speck of debris
    tidy = one_cell(regions)
    assert tidy[:5].sum() == 0  # the neighbour is gone with its bridge
    assert tidy[36, 38] == 1  # the hole is cytoplasm
    assert (tidy[lobe] == 2).all() and tidy[60, 5] == 0
    inside = (yy - 36) ** 2 + (xx - 30) ** 2 <= 12 ** 2
    kept = inside & (regions > 0)
    assert np.array_equal(tidy[kept], regions[kept])  # the cell itself is untouched
    empty = np.zeros((16, 16), np.uint8)
    assert np.array_equal(one_cell(empty), empty)
