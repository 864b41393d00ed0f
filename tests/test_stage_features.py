"""features=stages: the head sees the backbone's last three stages' maps, each average-pooled and concatenated."""

import mlflow
import numpy as np
import pytest
import torch

from bloodml.cache.keys import model_key
from bloodml.config import build_config
from bloodml.inputs.input_spec import InputSpec
from bloodml.inputs.transforms import Preprocess
from bloodml.errors import BloodmlError
from bloodml.models.registry import create_backbone
from bloodml.train import run_training
from bloodml.tracking.model import load_model
from conftest import TINY_BACKBONE, tiny_overrides


def _maps(backbone, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """The named modules' outputs, caught with hooks of the test's own on the plain network."""
    seen = {}
    handles = [backbone.submodule(n).register_forward_hook(lambda m, i, out, n=n: seen.__setitem__(n, out))
               for n in names]
    with torch.no_grad():
        backbone.body(x)
    for handle in handles:
        handle.remove()
    return seen


def test_stage_features_are_the_last_three_stages_maps_average_pooled():
    torch.manual_seed(0)
    final = create_backbone(TINY_BACKBONE, pretrained=False).eval()
    stages = create_backbone(TINY_BACKBONE, pretrained=False, features="stages").eval()
    stages.load_state_dict(final.state_dict())  # the same network: only what is pooled differs
    assert stages.pooled == final.stages[-3:] and stages.features == "stages" and final.features == "final"
    x = torch.rand(3, 3, 48, 48)
    maps = _maps(final, x, stages.pooled)
    expected = torch.cat([maps[n].mean((2, 3)) for n in stages.pooled], 1)
    with torch.no_grad():
        got = stages(x)
    assert torch.allclose(got, expected, atol=1e-6)
    assert got.shape[1] == stages.feature_dim == sum(maps[n].shape[1] for n in stages.pooled) != final.feature_dim
    with torch.no_grad():
        assert final(x).shape[1] == final.feature_dim  # final features: unchanged
    assert stages.gradcam_layer == stages.pooled[-1]  # Grad-CAM looks at a layer the head depends on
    assert not any(stages.submodule(n)._forward_hooks for n in stages.pooled)  # no hook outlives a forward pass
    resnet = create_backbone("resnet50", pretrained=False, features="stages")
    assert resnet.pooled == ["layer2", "layer3", "layer4"] and resnet.feature_dim == 512 + 1024 + 2048
    # the cache keeps the two kinds of features apart, and final features keep the keys they had
    spec = InputSpec(image_size=32)
    assert model_key(TINY_BACKBONE, stages, Preprocess(spec), "none") != model_key(TINY_BACKBONE, final,
                                                                                  Preprocess(spec), "none")


def test_a_stage_features_run_logs_serves_and_rebuilds_the_same_network(make_wbc, tmp_path):
    root = make_wbc(per_class=6)
    trained = run_training(build_config(None, tiny_overrides(root, epochs=2, gradcam_samples=2, features="stages",
                                                             cache_dir=tmp_path / "cache")))
    run = mlflow.get_run(trained.run_id)
    assert run.data.params["features"] == "stages"
    assert trained.model.head.linear.in_features == trained.model.backbone.feature_dim
    graph, meta = load_model(trained.run_id)
    assert meta["features"] == "stages"
    # adapt_bn's route: the network rebuilt from the registry and the logged weights is the logged graph
    network, _ = load_model(trained.run_id, network=True)
    assert network.backbone.pooled == trained.model.backbone.pooled
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert np.allclose(network(x).numpy(), graph.predict(x.numpy()), atol=1e-5)
    # the same data with final features in the same cache: its own features, not the stage ones
    again = run_training(build_config(None, tiny_overrides(root, epochs=1, gradcam_samples=0, features="final",
                                                           cache_dir=tmp_path / "cache")))
    assert again.model.head.linear.in_features == again.model.backbone.feature_dim != network.backbone.feature_dim


def test_a_bad_features_value_is_one_line():
    with pytest.raises(BloodmlError, match="features='hypercolumns' is not allowed"):
        build_config(None, {"features": "hypercolumns"})
    with pytest.raises(BloodmlError, match="features='x' is unknown"):
        create_backbone(TINY_BACKBONE, pretrained=False, features="x")
    with pytest.raises(BloodmlError, match="backbone 'test_vit' has no convolutional stage maps"):
        create_backbone("test_vit", pretrained=False, features="stages")  # a transformer's stages are tokens
    assert create_backbone("test_vit", pretrained=False).features == "final"


def test_the_standardising_head_uses_batch_statistics_in_training_and_their_running_averages_after():
    from bloodml.models.head import Head, head_for

    torch.manual_seed(0)
    head = Head(4, 2, dropout=0.0, standardise=True)
    seen = []
    head.linear.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    x = torch.randn(64, 4) * torch.tensor([1.0, 10.0, 100.0, 0.1]) + torch.tensor([5.0, -3.0, 50.0, 0.0])
    head.train()
    for _ in range(150):  # the running averages' momentum is 0.1: 0.9**150 of the start is left
        head(x)
    standardised = seen[-1]
    assert torch.allclose(standardised.mean(0), torch.zeros(4), atol=1e-4)
    assert torch.allclose(standardised.std(0, unbiased=False), torch.ones(4), atol=1e-3)
    assert torch.allclose(head.norm.running_mean, x.mean(0), rtol=1e-3, atol=1e-3)
    one = head(x[:1])  # a training batch of one image: no error, the running averages instead
    head.eval()
    assert torch.allclose(one, head(x[:1]), atol=1e-6)
    assert head_for(create_backbone(TINY_BACKBONE, pretrained=False, features="stages"), 3).norm is not None
    assert head_for(create_backbone(TINY_BACKBONE, pretrained=False), 3).norm is None  # final features: as before


def test_adapt_bn_re_estimates_the_heads_standardisation_on_the_new_images():
    from bloodml.models.adaptation import adapt_batchnorm
    from bloodml.models.classifier import BloodCellClassifier
    from bloodml.models.head import head_for

    torch.manual_seed(0)
    backbone = create_backbone(TINY_BACKBONE, pretrained=False, features="stages")
    model = BloodCellClassifier(InputSpec(image_size=32), backbone, head_for(backbone, 3), ["a", "b", "c"]).eval()
    shifted = [torch.rand(6, 3, 32, 32) * 0.5 + 0.4 for _ in range(3)]
    seen = []  # what reaches the head's batch norm during the adaptation passes (the hook travels with the copy)
    model.head.norm.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    adapted, layers = adapt_batchnorm(model, shifted)
    assert adapted.head.norm in [m for m in adapted.modules() if isinstance(m, torch.nn.BatchNorm1d)] and layers > 1
    assert len(seen) == 3 and all(len(s) == 6 for s in seen)
    assert torch.allclose(adapted.head.norm.running_mean, torch.cat(seen).mean(0), atol=1e-5)  # exact average
    assert not torch.allclose(adapted.head.norm.running_mean, model.head.norm.running_mean)  # the original kept
    assert torch.equal(model.head.norm.running_mean, torch.zeros_like(model.head.norm.running_mean))
