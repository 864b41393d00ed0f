import numpy as np
import pytest
from PIL import Image

from bloodml.data.masks import BACKGROUND, CYTOPLASM, NUCLEUS, decode_mask, decode_mask_counted, load_regions, \
    parse_mask_codes
from bloodml.errors import BloodmlError


def test_grey_codes_wbc_style():
    grey = np.array([[0, 128], [255, 0]], dtype=np.uint8)
    assert decode_mask(grey).tolist() == [[BACKGROUND, CYTOPLASM], [NUCLEUS, BACKGROUND]]


def test_rgb_codes_allidb2_style_and_jpeg_noise():
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 255, 255)
    rgb[0, 1] = (0, 0, 250)  # cytoplasm, slightly off as after lossy compression
    rgb[0, 2] = (3, 255, 252)
    rgb[1, :] = (0, 255, 255)
    assert decode_mask(rgb).tolist() == [[BACKGROUND, CYTOPLASM, NUCLEUS], [NUCLEUS] * 3]


def test_user_codes_and_unknown_codes():
    codes = parse_mask_codes("10=background,20=cell,30=nucleus")
    assert decode_mask(np.array([[10, 20, 30]], dtype=np.uint8), codes).tolist() == [[0, 1, 2]]
    with pytest.raises(BloodmlError, match="not recognised; pass mask_codes"):
        decode_mask(np.array([[10, 77, 200, 30]], dtype=np.uint8))
    with pytest.raises(BloodmlError, match="unknown"):
        parse_mask_codes("0=bg")


def test_masks_resized_nearest_and_aspect_checked(tmp_path):
    big = np.zeros((20, 20), dtype=np.uint8)
    big[5:15, 5:15] = 255
    Image.fromarray(big).save(tmp_path / "m.png")
    regions = load_regions(tmp_path / "m.png", (10, 10))
    assert set(np.unique(regions)) == {BACKGROUND, CYTOPLASM}  # binary mask -> cell; nearest keeps codes exact
    assert regions[5, 5] == CYTOPLASM and regions[0, 0] == BACKGROUND
    with pytest.raises(BloodmlError, match="different aspect ratio"):
        load_regions(tmp_path / "m.png", (10, 30))


def test_mask_modes():
    import torch

    from bloodml.inputs.input_spec import apply_mask

    image = torch.full((1, 3, 1, 3), 9, dtype=torch.uint8)
    regions = torch.tensor([[[0, 1, 2]]], dtype=torch.uint8)
    assert apply_mask(image, regions, "cell")[0, 0].tolist() == [[0, 9, 9]]
    assert apply_mask(image, regions, "nucleus")[0, 0].tolist() == [[0, 0, 9]]
    assert apply_mask(image, regions, "background")[0, 0].tolist() == [[9, 0, 0]]
    assert apply_mask(image, regions, "none") is image
    with pytest.raises(BloodmlError, match="masks='cells' is unknown"):
        apply_mask(image, regions, "cells")


def _nucleus_mask(size=100):
    grey = np.zeros((size, size), dtype=np.uint8)
    grey[10:90, 10:90] = 128
    grey[30:70, 30:70] = 255
    return grey


def test_stray_values_inside_the_nucleus_take_the_region_around_them():
    grey = _nucleus_mask()
    rng = np.random.default_rng(0)
    inside = np.argwhere(grey == 255)
    chosen = inside[rng.choice(len(inside), size=50, replace=False)]  # 0.5 % of the mask, all inside the nucleus
    grey[chosen[:, 0], chosen[:, 1]] = rng.choice([77, 200, 180], size=50)
    regions, strays = decode_mask_counted(grey)
    assert strays == 50
    assert (regions[30:70, 30:70] == NUCLEUS).all()  # no holes in the nucleus
    assert (regions == decode_mask(_nucleus_mask())).all()


def test_too_many_stray_values_are_refused_and_the_share_is_a_parameter():
    grey = _nucleus_mask()
    grey[:20, :] = 77  # 20 % of the pixels
    with pytest.raises(BloodmlError, match="mask codes .* are not recognised; pass mask_codes"):
        decode_mask(grey)
    tolerated = decode_mask(grey, tolerance=0.25)  # when the user says so: each stray pixel takes its neighbours'
    assert tolerated[5, 3] == BACKGROUND and tolerated[5, 50] == CYTOPLASM and tolerated.max() == NUCLEUS


def test_a_run_with_stray_mask_pixels_says_so(make_wbc, capsys):
    from bloodml.config import build_config
    from bloodml.train import run_training
    from conftest import tiny_overrides

    root = make_wbc(per_class=8)
    for number in (1, 2, 3):
        mask = np.array(Image.open(root / f"{number:03d}.png"))
        mask[12, 11:13] = 200  # two anti-aliased pixels inside the nucleus
        Image.fromarray(mask).save(root / f"{number:03d}.png")
    run_training(build_config(None, tiny_overrides(root, masks="cell", epochs=1, gradcam_samples=0)))
    out = capsys.readouterr().out
    assert "note: 3 of 16 masks held stray pixel values (at most 2 pixels in one); each took the region of its " \
           "neighbourhood" in out
