"""Pretrained backbones: `pretrain` logs and registers one, runs start from its models:/ URI, the feature cache keys
features by the backbone's weights, and what is not a backbone gets one line."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch

from bloodml.cache.keys import image_keys, model_key
from bloodml.cache.store import FeatureStore
from bloodml.compute import CPU
from bloodml.config import build_config
from bloodml.errors import BloodmlError
from bloodml.inputs.input_spec import InputSpec
from bloodml.inputs.transforms import Preprocess, fit_input_spec
from bloodml.models.backbone_card import BackboneCard, save_backbone
from bloodml.models.registry import create_backbone
from bloodml.tracking.backbones import local_backbone
from bloodml.training.features import FrozenFeatures

from conftest import TINY_BACKBONE, tiny_overrides


def backbone_folder(path, seed: int):
    torch.manual_seed(seed)
    body = create_backbone(TINY_BACKBONE, pretrained=False).body
    card = BackboneCard(architecture=TINY_BACKBONE, input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    save_backbone(body, card, path)
    return str(path)


def test_the_feature_cache_never_mixes_two_backbones_of_one_architecture(tmp_path):
    """Two backbones that share architecture, card and name, differing only in their weights: each gets its own
    cache key, and the second computes its own features instead of reading the first's."""
    images = torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8)
    regions = torch.zeros(6, 32, 32, dtype=torch.uint8)
    store = FeatureStore(str(tmp_path / "cache"), use_disk=True)
    features = []
    for seed in (1, 2):
        backbone = create_backbone(backbone_folder(tmp_path / f"bb{seed}", seed)).eval()
        config = build_config(None, {"image_size": 32, "normalize": "imagenet"})
        spec = InputSpec.from_config(config, backbone.mean, backbone.std)
        spec = fit_input_spec(spec, spec.network_input(images, regions))
        preprocess = Preprocess(spec)
        key = model_key("models:/bloodml-backbone@pbc", backbone, preprocess, spec.mask_mode)  # the same name
        frozen = FrozenFeatures(store, key, backbone, preprocess, spec, 0, CPU, False)
        misses = store.misses
        features.append(frozen.of(images, regions, None, 0, image_keys(images, regions)))
        assert store.misses - misses == len(images), "the second backbone read the first one's features"
    assert not torch.allclose(features[0], features[1])


def test_a_folder_or_uri_that_is_not_a_backbone_gets_one_line(tmp_path):
    folder = tmp_path / "classifier"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors: {}\n")
    with pytest.raises(BloodmlError) as error:
        create_backbone(str(folder))
    assert "is not a backbone (no backbone.json; it holds MLmodel)" in str(error.value)
    mlflow.set_experiment("not-a-backbone")  # the active experiment is process-wide: an earlier test's is gone
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(folder / "MLmodel"), "model")
    with pytest.raises(BloodmlError) as error:
        local_backbone(f"runs:/{run.info.run_id}/model")
    message = str(error.value)
    assert message.startswith(f"backbone='runs:/{run.info.run_id}/model' is not a backbone") and "\n" not in message
    with pytest.raises(BloodmlError, match="backbone='models:/nothing@here' not found"):
        local_backbone("models:/nothing@here")


def test_pretrain_registers_a_backbone_that_a_run_starts_from(make_folders, capsys):
    from bloodml.pretrain import pretrain_config, run_pretrain
    from bloodml.train import run_training

    pool = make_folders(per_class=10, name="pool")
    config = pretrain_config(None, tiny_overrides(pool, epochs=1, batch_size=8, zoom=0.1))
    assert (config.finetune, config.schedule, config.experiment) == ("all", "onecycle", "bloodml-pretrain")
    done = run_pretrain(config, "tiny-backbone", "pool")
    assert done.uri == "models:/tiny-backbone@pool" and capsys.readouterr().out.strip().endswith(done.uri)
    run = mlflow.get_run(done.run_id)
    assert run.data.tags["bloodml.task"] == "pretrain" and run.data.tags["bloodml.kind"] == "pretrain"
    assert [d.dataset.name for d in run.inputs.dataset_inputs if d.tags[0].value == "train"] == ["pool"]
    card = json.loads(open(mlflow.artifacts.download_artifacts(f"runs:/{done.run_id}/backbone/backbone.json")).read())
    assert card["architecture"] == TINY_BACKBONE and card["input_size"] == 32 and card["classes"] == [
        "alpha", "beta", "gamma"] and card["trained"]["test_accuracy"] == pytest.approx(
        run.data.metrics["test_accuracy"], abs=1e-4)

    data = make_folders(per_class=8, classes=("alpha", "beta"), name="mine")
    result = run_training(build_config(None, tiny_overrides(data, backbone=done.uri, epochs=1, gradcam_samples=0)),
                          plots=False)
    trained = result.model.backbone
    assert trained.card.weights_sha256 == card["weights_sha256"] and trained.mean == tuple(card["mean"])
    pretrained = create_backbone(local_backbone(done.uri))
    for name, tensor in pretrained.body.state_dict().items():  # frozen: the pretrained weights, untouched
        assert torch.equal(tensor, trained.body.state_dict()[name]), name
    logged = mlflow.models.get_model_info(f"runs:/{result.run_id}/model").metadata
    assert logged["backbone"] == TINY_BACKBONE and logged["backbone_source"] == done.uri
    assert mlflow.get_run(result.run_id).data.params["backbone"] == done.uri
