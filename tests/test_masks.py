import numpy as np
import pytest
from PIL import Image

from bloodml.data.masks import BACKGROUND, CYTOPLASM, NUCLEUS, decode_mask, load_regions, parse_mask_codes
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

    from bloodml.data.transforms import apply_mask

    image = torch.full((1, 3, 1, 3), 9, dtype=torch.uint8)
    regions = torch.tensor([[[0, 1, 2]]], dtype=torch.uint8)
    assert apply_mask(image, regions, "cell")[0, 0].tolist() == [[0, 9, 9]]
    assert apply_mask(image, regions, "nucleus")[0, 0].tolist() == [[0, 0, 9]]
    assert apply_mask(image, regions, "background")[0, 0].tolist() == [[9, 0, 0]]
    assert apply_mask(image, regions, "none") is image
    with pytest.raises(BloodmlError, match="masks='cells' is unknown"):
        apply_mask(image, regions, "cells")
