"""Issue 14: test-time adaptation (adapt_bn, AdaBN) and test-time blur (test_blur) for another instrument."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bloodml.config import build_config
from bloodml.inputs.acquisition import sharpness_blur
from bloodml.inputs.input_spec import InputSpec
from bloodml.models.adaptation import adapt_batchnorm, batchnorm_layers
from bloodml.models.classifier import BloodCellClassifier
from bloodml.models.head import Head
from bloodml.models.registry import create_backbone
from bloodml.train import run_training
from clihelp import run_cli
from conftest import TINY_BACKBONE, tiny_overrides


def tiny_classifier() -> BloodCellClassifier:
    torch.manual_seed(0)
    backbone = create_backbone(TINY_BACKBONE, pretrained=False)
    return BloodCellClassifier(InputSpec(image_size=32), backbone, Head(backbone.feature_dim, 3), ["a", "b", "c"]).eval()


def test_adapt_bn_changes_only_batchnorm_statistics_and_they_are_the_new_images_own():
    model = tiny_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shifted = [torch.rand(6, 3, 32, 32) * 0.5 + 0.4 for _ in range(3)]  # another instrument: brighter, flatter
    adapted, layers = adapt_batchnorm(model, shifted)
    assert layers == len(batchnorm_layers(model)) > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    bn_buffers = {f"{name}.{buffer}" for name, module in adapted.named_modules()
                  if module in batchnorm_layers(adapted) for buffer in ("running_mean", "running_var",
                                                                         "num_batches_tracked")}
    changed = {k for k, v in adapted.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= bn_buffers  # weights, the temperature, normalisation stats: all as trained
    assert any(k.endswith("running_mean") for k in changed)
    assert all(not m.training for m in adapted.modules())  # handed back in eval mode
    # the first batch-norm layer's mean is the exact mean of its input over all the new images
    first = batchnorm_layers(adapted)[0]
    seen = []
    handle = batchnorm_layers(model)[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(torch.cat(shifted))
    handle.remove()
    assert torch.allclose(first.running_mean, seen[0].mean((0, 2, 3)), atol=1e-5)
    plain, none = adapt_batchnorm(Head(4, 2), [torch.rand(3, 4)])
    assert none == 0 and isinstance(plain, Head)


def test_test_blur_blurs_inside_the_mask_only():
    x = torch.zeros(1, 3, 32, 32)
    x[:, :, 8:24, 8:24] = torch.tensor([0.8, 0.3, 0.5]).view(1, 3, 1, 1)  # a flat cell on a zeroed background
    out = sharpness_blur(x, 2.0)
    assert torch.equal(out[:, :, :8], x[:, :, :8])  # the background stays zero: nothing bleeds out
    assert torch.allclose(out[:, :, 8:24, 8:24], x[:, :, 8:24, 8:24], atol=1e-5)  # no dark rim bleeds in
    sharp = torch.rand(2, 3, 32, 32)
    soft = sharpness_blur(sharp, 1.5)
    assert (soft[..., 1:, :] - soft[..., :-1, :]).abs().mean() < 0.5 * (sharp[..., 1:, :] - sharp[..., :-1, :]).abs().mean()
    assert torch.equal(sharpness_blur(sharp, 0.0), sharp)


def test_predict_and_evaluate_adapt_to_another_instrument_from_the_logged_weights(make_wbc, tmp_path, capsys):
    from bloodml.tracking.model import load_model

    root = make_wbc(per_class=8)
    trained = run_training(build_config(None, tiny_overrides(root, epochs=1, gradcam_samples=0)))
    graph, _ = load_model(trained.run_id)
    network, _ = load_model(trained.run_id, network=True)  # rebuilt from the registry and the logged weights
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert np.allclose(network(x).numpy(), graph.predict(x.numpy()), atol=1e-5)
    other = tmp_path / "other_instrument"
    shutil.copytree(root, other)  # the same labelled layout, another stain: darker and bluer
    for path in sorted(other.glob("*.bmp")):
        array = np.asarray(Image.open(path).convert("RGB")).astype(float) * np.array([0.5, 0.7, 1.0])
        Image.fromarray(array.clip(0, 255).astype(np.uint8)).save(path)
    images = ("--pattern", "*.bmp")
    code, out, err = run_cli(capsys, "predict", "-m", trained.run_id, other, *images, "-o", tmp_path / "plain.csv")
    assert code == 0, err
    code, out, err = run_cli(capsys, "predict", "-m", trained.run_id, other, *images, "-o", tmp_path / "adapted.csv",
                             "--adapt-bn")
    assert code == 0 and "batch-norm statistics of" in out and f"re-estimated on {len(list(other.glob('*.bmp')))}" in out
    plain, adapted = pd.read_csv(tmp_path / "plain.csv"), pd.read_csv(tmp_path / "adapted.csv")
    columns = [c for c in plain.columns if c.startswith("p_")]
    assert (plain["file"] == adapted["file"]).all()
    assert np.abs(plain[columns].to_numpy() - adapted[columns].to_numpy()).max() > 1e-4
    code, out, err = run_cli(capsys, "predict", "-m", trained.run_id, other, *images, "-o", tmp_path / "blurred.csv",
                             "--test-blur", "1.5")
    blurred = pd.read_csv(tmp_path / "blurred.csv")
    assert code == 0 and np.abs(plain[columns].to_numpy() - blurred[columns].to_numpy()).max() > 1e-5
    code, out, err = run_cli(capsys, "predict", "-m", trained.run_id, sorted(other.glob("*.bmp"))[0], "-o",
                             tmp_path / "one.csv", "--adapt-bn")
    assert code != 0 and "adapt_bn needs at least 2 images" in out + err and "Traceback" not in out + err
    code, out, err = run_cli(capsys, "evaluate", "-m", trained.run_id, "--data", other, "--adapt_bn", "true",
                             "--test_blur", "1.0", "--min_class_count", "2", "--near_duplicate_distance", "-1")
    assert code == 0, out + err
    import mlflow
    run = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`bloodml.task` = 'evaluate'",
                             output_format="list")[0]
    assert run.data.params["adapt_bn"] == "True" and run.data.params["test_blur"] == "1.0"


def test_adapt_bn_refuses_a_model_without_weights_and_tampered_weights_in_one_line(make_wbc, capsys, monkeypatch):
    import mlflow

    import bloodml.tracking.model as tracked

    root = make_wbc(per_class=6)
    images = (root, "--pattern", "*.bmp", "--adapt-bn", "-o", "x.csv")
    trained = run_training(build_config(None, tiny_overrides(root, epochs=1, gradcam_samples=0)))
    weights = Path(mlflow.get_run(trained.run_id).info.artifact_uri.removeprefix("file://")) / tracked.WEIGHTS
    torch.save({"tampered": torch.zeros(1)}, weights)
    code, out, err = run_cli(capsys, "predict", "-m", trained.run_id, *images)
    assert code != 0 and "its weights differ" in out + err and "Traceback" not in out + err
    original = tracked.model_metadata  # what a model logged before the weights were kept carries
    monkeypatch.setattr(tracked, "model_metadata", lambda model, extra=None: {
        k: v for k, v in original(model, extra).items() if k != "weights"})
    old = run_training(build_config(None, tiny_overrides(root, epochs=1, gradcam_samples=0)))
    code, out, err = run_cli(capsys, "predict", "-m", old.run_id, *images)
    assert code != 0 and "has no weights beside its graph" in out + err and "Traceback" not in out + err


@pytest.mark.parametrize("name, value, message", [
    ("test_blur", "11", "test_blur=11.0 is out of range"),
    ("ema", "1.5", "ema=1.5 is out of range"),
    ("stain_norm", "vahadane", "stain_norm='vahadane' is not allowed"),
    ("adapt_bn", "maybe", "adapt_bn='maybe' is not a valid bool"),
])
def test_the_new_parameters_refuse_bad_values_in_one_line(name, value, message):
    from bloodml.errors import BloodmlError

    with pytest.raises(BloodmlError, match=message):
        build_config(None, {name: value})
