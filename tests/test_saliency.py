import warnings

import numpy as np
import pytest
import torch

from bloodml.inputs.input_spec import InputSpec
from bloodml.evaluation.saliency import chance_level, gradcam_maps, pointing_hit, relevance_mass, saliency_scores
from bloodml.models.classifier import BloodCellClassifier
from bloodml.models.head import Head
from bloodml.models.registry import create_backbone
from conftest import TINY_BACKBONE


def test_figures_on_a_constructed_saliency_map():
    inside = np.zeros((4, 4), dtype=bool)
    inside[1:3, 1:3] = True  # a 2x2 cell in a 4x4 image: chance 0.25
    saliency = np.zeros((4, 4))
    saliency[1, 1] = 3.0  # inside
    saliency[0, 0] = 1.0  # outside
    saliency[3, 3] = -5.0  # negative evidence is ignored
    assert relevance_mass(saliency, inside) == pytest.approx(0.75)
    assert pointing_hit(saliency, inside) == 1.0
    assert chance_level(inside) == 0.25
    saliency[0, 0] = 4.0
    assert pointing_hit(saliency, inside) == 0.0 and relevance_mass(saliency, inside) == pytest.approx(3 / 7)
    regions = inside.astype(np.uint8)[None].repeat(2, 0)
    scores = saliency_scores(np.stack([saliency, np.ones((4, 4))]), regions, np.array([True, True]))
    assert scores["saliency_relevance_mass"] == pytest.approx((3 / 7 + 0.25) / 2)
    assert scores["saliency_pointing_game"] == pytest.approx(0.5)  # the flat map's maxima include the cell
    assert scores["saliency_relevance_chance"] == pytest.approx(0.25)
    assert saliency_scores(np.stack([saliency]), regions[:1], np.array([False])) == {}
    # a map with no positive saliency (an untrained network's Grad-CAM) points nowhere: left out, not a hit or a NaN
    blank = np.zeros((4, 4))
    with_blank = saliency_scores(np.stack([saliency, np.ones((4, 4)), blank]), regions[[0, 0, 0]],
                                 np.array([True, True, True]))
    assert with_blank == {**scores, "saliency_blank_maps": 1.0} and scores["saliency_blank_maps"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Mean of empty slice" either
        assert saliency_scores(np.stack([blank]), regions[:1], np.array([True])) == {
            "saliency_images": 0.0, "saliency_blank_maps": 1.0}


def test_gradcam_runs_on_a_frozen_backbone():
    torch.manual_seed(0)
    backbone = create_backbone(TINY_BACKBONE, pretrained=False)
    for p in backbone.parameters():
        p.requires_grad_(False)
    model = BloodCellClassifier(InputSpec(image_size=32), backbone, Head(backbone.feature_dim, 2), ["a", "b"])
    maps, predicted = gradcam_maps(model, torch.rand(3, 3, 32, 32))
    assert maps.shape == (3, 32, 32) and maps.min() >= 0 and maps.max() <= 1 and predicted.shape == (3,)
