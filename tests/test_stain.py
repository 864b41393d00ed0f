"""Issue 14: Macenko stain normalisation, checked against torchstain (the maintained reference implementation)
and against images made from known stain vectors."""

import numpy as np
import pytest
import torch

from bloodml.config import build_config
from bloodml.inputs.input_spec import InputSpec
from bloodml.inputs.stain import LIGHT, REFERENCE_MATRIX, macenko, stain_vectors
from bloodml.inputs.transforms import Preprocess, fit_input_spec
from bloodml.train import run_training
from conftest import tiny_overrides

HEMATOXYLIN = torch.tensor([0.65, 0.70, 0.29])  # Ruifrok & Johnston's published stain vectors
EOSIN = torch.tensor([0.07, 0.99, 0.11])


def stained_image(h_scale: float = 1.0, e_scale: float = 1.0, size: int = 48, seed: int = 0) -> torch.Tensor:
    """An RGB image in [0,1] (1,3,S,S) made from two stains by Beer-Lambert: background, a pink field, a nucleus."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    nucleus = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 5) ** 2).float()
    h = (0.2 + 1.2 * nucleus + 0.15 * torch.rand(size, size, generator=g)) * h_scale
    e = (0.6 + 0.3 * torch.rand(size, size, generator=g)) * e_scale
    stains = torch.stack([HEMATOXYLIN / HEMATOXYLIN.norm(), EOSIN / EOSIN.norm()], 1)  # (3,2)
    od = stains @ torch.stack([h.flatten(), e.flatten()])
    rgb = (LIGHT * torch.exp(-od)).clamp(0, 255).round() / 255
    return rgb.view(1, 3, size, size)


def test_macenko_recovers_the_stain_vectors_an_image_was_made_with():
    x = stained_image()
    matrix, _, _, enough = stain_vectors(x, torch.ones_like(x[:, :1]))
    assert bool(enough[0])
    for column, truth in enumerate((HEMATOXYLIN, EOSIN)):
        cosine = torch.nn.functional.cosine_similarity(matrix[0, :, column], truth / truth.norm(), dim=0)
        assert cosine > 0.98, (column, cosine)


def test_macenko_matches_torchstain_to_a_grey_level():
    torchstain = pytest.importorskip("torchstain.torch.normalizers.macenko")
    reference, image = stained_image(seed=1), stained_image(h_scale=1.6, e_scale=0.5, seed=2)
    theirs = torchstain.TorchMacenkoNormalizer()
    theirs.fit((reference[0] * 255).round().to(torch.uint8))
    expected, _, _ = theirs.normalize((image[0] * 255).round().to(torch.uint8), stains=False)
    spec = fit_input_spec(InputSpec(stain_norm="macenko"), reference)
    assert np.allclose(np.array(spec.stain_matrix).reshape(3, 2), theirs.HERef.numpy(), atol=2e-3)
    ours = Preprocess(spec).colour(image)[0].permute(1, 2, 0) * 255
    difference = (ours - expected.float()).abs()
    assert difference.mean() < 1.0 and difference.max() <= 2.0  # torchstain truncates to integers
    assert (ours - image[0].permute(1, 2, 0) * 255).abs().mean() > 10  # and the stain did change


def test_macenko_keeps_masked_zeros_and_leaves_unstained_images_alone():
    x = stained_image()
    x[:, :, :10] = 0  # a masked-out band
    out = macenko(x, torch.tensor(REFERENCE_MATRIX).view(3, 2), torch.tensor([1.0, 1.0]))
    assert torch.equal(out[:, :, :10], x[:, :, :10]) and not torch.allclose(out, x)
    blank = torch.full((2, 3, 16, 16), 0.97)  # nothing stained: no stain vectors to estimate
    assert torch.equal(macenko(blank, torch.tensor(REFERENCE_MATRIX).view(3, 2), torch.ones(2)), blank)


def test_a_macenko_run_logs_its_fitted_reference_and_exports(make_wbc):
    root = make_wbc(per_class=6)
    result = run_training(build_config(None, tiny_overrides(root, epochs=1, stain_norm="macenko", gradcam_samples=0)))
    assert result.model.spec.stain_matrix != REFERENCE_MATRIX  # fitted on the training split
    assert torch.allclose(result.model.preprocess.stain_matrix.flatten(),
                          torch.tensor(result.model.spec.stain_matrix), atol=1e-6)
