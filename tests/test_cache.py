"""Issue 5: the feature cache is keyed by content, never stale, never trusted when corrupt, and changes nothing."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from bloodml.cache.keys import image_keys, model_key, view_key
from bloodml.cache.store import FeatureStore, clear_memory
from bloodml.config import build_config
from bloodml.inputs.dataset import preload
from bloodml.inputs.input_spec import InputSpec
from bloodml.inputs.transforms import Preprocess, build_augmentation, fit_input_spec
from bloodml.evaluation.report import logits_of
from bloodml.models.classifier import tta_views
from bloodml.models.head import Head
from bloodml.models.registry import create_backbone
from bloodml.train import build_trainer, run_training
from bloodml.training.loop import HeadTrainer, NaiveHeadTrainer, fit
from conftest import TINY_BACKBONE, tiny_overrides
from test_techniques import _imageset


def _backbone(seed=0):
    torch.manual_seed(seed)
    return create_backbone(TINY_BACKBONE, pretrained=False)


def test_keys_follow_content_and_nothing_else():
    data = _imageset(3)
    backbone, preprocess = _backbone(), Preprocess()
    base = model_key(TINY_BACKBONE, backbone, preprocess, "cell")
    assert base == model_key(TINY_BACKBONE, _backbone(), Preprocess(), "cell")  # same content, new objects
    assert base != model_key(TINY_BACKBONE, backbone, preprocess, "none")  # mask mode
    assert base != model_key(TINY_BACKBONE, _backbone(seed=1), preprocess, "cell")  # weights
    assert base != model_key(TINY_BACKBONE, backbone, Preprocess(InputSpec(color_space="bgr")), "cell")  # mode
    fitted = Preprocess(fit_input_spec(InputSpec(normalize="dataset", mean=(0.5,) * 3, std=(0.5,) * 3),
                                       torch.rand(4, 3, 8, 8)))
    assert base != model_key(TINY_BACKBONE, backbone, fitted, "cell")  # fitted statistics

    keys = image_keys(data.images, data.regions)
    assert keys == image_keys(data.images.clone(), data.regions.clone())
    changed_image = data.images.clone()
    changed_image[1, 0, 0, 0] ^= 1
    changed_mask = data.regions.clone()
    changed_mask[2, 5, 5] = 0
    assert image_keys(changed_image, data.regions) == [keys[0], image_keys(changed_image, data.regions)[1], keys[2]]
    assert image_keys(changed_image, data.regions)[1] != keys[1]
    assert image_keys(data.images, changed_mask)[2] != keys[2] and image_keys(data.images, changed_mask)[:2] == keys[:2]

    transform = build_augmentation(90, 0.05, 0.1, 0.1, True, True, 0.2)
    assert view_key(transform, 0, 1) == view_key(build_augmentation(90, 0.05, 0.1, 0.1, True, True, 0.2), 0, 1)
    assert len({view_key(transform, 0, 1), view_key(transform, 1, 1), view_key(transform, 0, 2),
                view_key(build_augmentation(45, 0.05, 0.1, 0.1, True, True, 0.2), 0, 1), view_key(None, 0, 1)}) == 5


def test_disk_reuse_and_corruption(tmp_path):
    store = FeatureStore(tmp_path, use_memory=False)
    calls = []

    def compute(index):
        calls.append(list(index))
        return torch.arange(len(index) * 4, dtype=torch.float32).reshape(len(index), 4) + 100 * index[0]

    first = store.features("m" * 32, "plain", ["a", "b", "c"], compute)
    again = FeatureStore(tmp_path, use_memory=False).features("m" * 32, "plain", ["c", "a"], compute)
    assert calls == [[0, 1, 2]] and torch.equal(again, first[[2, 0]])
    more = FeatureStore(tmp_path, use_memory=False).features("m" * 32, "plain", ["a", "d"], compute)
    assert calls[-1] == [1] and torch.equal(more[0], first[0])  # only the new image is computed

    shard = store.shard_path("m" * 32, "plain")
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF  # flip bits inside the tensor data: the file still parses, the checksum does not match
    shard.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="corrupt"):
        rebuilt = FeatureStore(tmp_path, use_memory=False).features("m" * 32, "plain", ["a", "b"], compute)
    assert calls[-1] == [0, 1] and torch.equal(rebuilt, first[:2])
    shard.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="corrupt"):
        FeatureStore(tmp_path, use_memory=False).features("m" * 32, "plain", ["a"], compute)
    assert calls[-1] == [0]


def test_cached_and_naive_training_give_the_same_head(make_wbc, tmp_path):
    config = build_config(None, tiny_overrides(make_wbc(per_class=4), aug_views=3, epochs=4, cache_dir=tmp_path))
    train, val = _imageset(14, seed=3, label_fn=lambda i: int(i < 5)), _imageset(6, seed=4)
    heads = {}
    for mode in ("disk", "off", "disk"):  # the second "disk" reads what the first wrote
        clear_memory()
        backbone = _backbone(seed=7)
        torch.manual_seed(0)
        head = Head(backbone.feature_dim, 2)
        trainer = build_trainer(config.__class__(**{**config.__dict__, "feature_cache": mode}), InputSpec(),
                                backbone, head, train, val, ["a", "b"], progress=False).trainer
        assert isinstance(trainer, NaiveHeadTrainer if mode == "off" else HeadTrainer)
        fit(trainer, trainer.settings)
        heads.setdefault(mode, []).append(head.linear.weight.detach().clone())
    assert torch.allclose(heads["disk"][0], heads["off"][0], atol=1e-5)
    assert torch.equal(heads["disk"][0], heads["disk"][1])


@pytest.mark.parametrize("tta", [False, True])
def test_evaluation_scores_the_cached_features_and_caches_the_test_ones(make_wbc, tmp_path, tta):
    """A frozen run evaluates from the features it cached (the validation ones it trained against, the test ones
    once; with TTA each flip and the transpose too): the logged predictions are those of the whole model run on the
    images, the test features are on disk for the next run, and that run (reading them) scores the same."""
    cache = tmp_path / "cache"
    config = build_config(None, tiny_overrides(make_wbc(per_class=5), cache_dir=cache, gradcam_samples=0, tta=tta))
    clear_memory()
    result = run_training(config, log_trained=False)
    model = result.model
    test = preload(result.data.split("test"), result.data.classes, model.spec)
    logged = pd.read_csv(mlflow.MlflowClient().download_artifacts(result.run_id, "evaluation/predictions_test.csv",
                                                                   str(tmp_path)))
    on_images = torch.softmax(logits_of(model, test), 1).numpy()
    assert len(logged) == len(test) > 0
    assert np.allclose(logged[[f"p_{c}" for c in result.data.classes]].to_numpy(), on_images, atol=1e-5)

    def nothing_to_compute(missing):
        raise AssertionError(f"{len(missing)} test images were not cached")
    key = model_key(TINY_BACKBONE, model.backbone, Preprocess(model.spec), model.spec.mask_mode)
    assert model.tta == tta
    views = zip(tta_views(test.images), tta_views(test.regions)) if tta else [(test.images, test.regions)]
    for images, regions in views:
        FeatureStore(cache, use_memory=False).features(key, "plain", image_keys(images.contiguous(),
                                                                                regions.contiguous()),
                                                       nothing_to_compute)
    clear_memory()
    again = run_training(config, log_trained=False)
    assert again.metrics["test_accuracy"] == result.metrics["test_accuracy"]
    assert again.metrics["test_loss"] == pytest.approx(result.metrics["test_loss"], abs=1e-6)
