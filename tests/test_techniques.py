"""Issue 3: the study's techniques, in the order that cannot leak."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bloodml.config import build_config
from bloodml.splitting.audit import find_leaks
from bloodml.inputs.dataset import ImageSet, preload
from bloodml.inputs.input_spec import InputSpec
from bloodml.inputs.transforms import Preprocess, augment, build_augmentation, fit_input_spec, rgb_to_hsv
from bloodml.models.head import Head
from bloodml.models.registry import create_backbone
from bloodml.train import build_trainer, run_training
from bloodml.training.balancing import class_weights, epoch_indices
from bloodml.training.early_stopping import EarlyStopping
from bloodml.training.features import extract_features
from bloodml.training.loop import HeadTrainer, TrainSettings, fit
from bloodml.training.regularisation import penalised, penalty
from conftest import TINY_BACKBONE, tiny_overrides


def _off_centre_cell(size=32):
    image = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    regions = torch.zeros(1, size, size, dtype=torch.uint8)
    image[:, 0, 4:12, 18:28] = 250  # a red block, and its mask, away from the centre
    image[:, 1, 4:12, 18:28] = 30
    regions[:, 4:12, 18:28] = 2
    return image, regions


@pytest.mark.parametrize("seed", range(5))
def test_augmented_masks_stay_aligned(seed):
    image, regions = _off_centre_cell()
    transform = build_augmentation(rotation=90, shift=0.1, shear=10, zoom=0.2, hflip=True, vflip=True, brightness=0)
    torch.manual_seed(seed)
    out_image, out_regions = augment(image, regions, transform)
    assert not torch.equal(out_regions, regions)  # it moved
    red = out_image[0, 0] > 125
    mask = out_regions[0] == 2
    overlap = (red & mask).sum() / (red | mask).sum()
    assert overlap > 0.8, float(overlap)  # image and mask moved together (interpolation blurs the edge only)


def test_brightness_changes_the_image_but_not_the_mask():
    image, regions = _off_centre_cell()
    transform = build_augmentation(0, 0, 0, 0, False, False, brightness=0.5)
    torch.manual_seed(3)
    out_image, out_regions = augment(image, regions, transform)
    assert torch.equal(out_regions, regions) and not torch.equal(out_image, image)


def _imageset(n, size=32, seed=0, label_fn=lambda i: i % 2):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 255, (n, 3, size, size), generator=g, dtype=torch.uint8)
    regions = torch.ones(n, size, size, dtype=torch.uint8)
    return ImageSet(images, regions, torch.ones(n, dtype=torch.bool), torch.tensor([label_fn(i) for i in range(n)]))


def test_validation_is_never_augmented_and_balancing_touches_training_only(make_wbc, tmp_path):
    config = build_config(None, tiny_overrides(make_wbc(per_class=4), aug_views=3, rotation=90, brightness=0.5,
                                               cache_dir=tmp_path / "cache"))
    backbone = create_backbone(TINY_BACKBONE, pretrained=False)
    preprocess = Preprocess()
    train, val = _imageset(12), _imageset(6, seed=1)
    trainer = build_trainer(config, InputSpec(), backbone, Head(backbone.feature_dim, 2), train, val, ["a", "b"],
                            progress=False).trainer
    plain_val = extract_features(backbone, preprocess, val.images, val.regions, InputSpec(), progress=False)
    assert torch.allclose(trainer.val_features, plain_val)
    assert trainer.train_features.shape[0] == 3 and not torch.allclose(trainer.train_features[0], trainer.train_features[1])

    labels = np.array([0] * 10 + [1] * 3)
    order = epoch_indices(labels, "oversample", 0, np.random.default_rng(0))
    assert np.bincount(labels[order]).tolist() == [10, 10] and set(order) == set(range(13))
    order = epoch_indices(labels, "oversample", 15, np.random.default_rng(0))
    assert np.bincount(labels[order]).tolist() == [15, 15]
    assert np.bincount(labels[epoch_indices(labels, "none", 0, np.random.default_rng(0))]).tolist() == [10, 3]
    assert class_weights(labels, 2).tolist() == pytest.approx([13 / 20, 13 / 6])


def test_oversampled_run_keeps_a_clean_split(make_wbc):
    root = make_wbc(per_class=16, classes=("alpha", "beta"))
    csv = root / "labels.csv"  # make it imbalanced: 16 vs 8
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:17] + lines[17:25]) + "\n")
    result = run_training(build_config(None, tiny_overrides(root, balance="oversample", epochs=1)))
    table = result.data.table
    assert len(table) == 24 and table["path"].is_unique and find_leaks(table, -1) == []
    assert result.metrics["n_train"] + result.metrics["n_val"] + result.metrics["n_test"] == 24


def test_early_stopping_on_a_constructed_curve():
    stopper = EarlyStopping(patience=3, min_delta=0.01)
    curve = [1.0, 0.8, 0.795, 0.9, 0.85, 0.7]
    stopped = next(epoch for epoch, loss in enumerate(curve, start=1) if stopper.step(epoch, loss, {"e": epoch}))
    assert stopped == 5 and stopper.best_epoch == 2 and stopper.best_state == {"e": 2}  # 0.795 is within min_delta
    never = EarlyStopping(patience=0)
    assert not any(never.step(e, loss) for e, loss in enumerate(curve, start=1)) and never.best_epoch == 6


def test_logged_model_is_the_best_epoch(make_wbc):
    import mlflow

    root = make_wbc(per_class=12)
    config = build_config(None, tiny_overrides(root, epochs=12, patience=3, lr=0.05, aug_views=1, augment="false"))
    result = run_training(config)
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "val_loss")
    best = min(history, key=lambda m: m.value)
    assert result.best_epoch == best.step and result.metrics["best_epoch"] == best.step
    spec = result.model.spec
    val = preload(result.data.split("val"), result.classes, spec)
    model = mlflow.pytorch.load_model(f"runs:/{result.run_id}/model")
    with torch.no_grad():
        probabilities = model(spec.network_input(val.images, val.regions))
    loss = F.nll_loss(torch.log(probabilities), val.labels)
    assert float(loss) == pytest.approx(best.value, abs=1e-5)


def test_penalties_are_exact_and_shrink_weights():
    torch.manual_seed(0)
    head = Head(16, 3)
    weights = penalised(head.parameters())
    assert [tuple(w.shape) for w in weights] == [(3, 16)]  # biases are not penalised
    w = head.linear.weight.detach()
    assert float(penalty(weights, 0.01, 0.0).detach()) == pytest.approx(0.01 * float(w.abs().sum()))
    assert float(penalty(weights, 0.0, 0.1).detach()) == pytest.approx(0.1 * float((w ** 2).sum()))
    assert float(penalty(weights, 0.01, 0.1).detach()) == pytest.approx(0.01 * float(w.abs().sum()) + 0.1 * float((w ** 2).sum()))

    features = torch.randn(1, 60, 16)
    labels = (features[0, :, 0] > 0).long()
    norms = {}
    for name, (l1, l2) in {"none": (0, 0), "l1": (0.01, 0), "l2": (0, 0.05)}.items():
        torch.manual_seed(1)
        model = Head(16, 2)
        settings = TrainSettings(epochs=30, batch_size=16, lr=0.05, l1=l1, l2=l2, seed=0)
        trainer = HeadTrainer(model, features, labels, features[0], labels, 2, settings)
        fit(trainer, settings)
        weight = model.linear.weight.detach()
        norms[name] = (float(weight.abs().sum()), float((weight ** 2).sum()))
    assert norms["l1"][0] < norms["none"][0] and norms["l2"][1] < norms["none"][1]


def test_dataset_normalisation_comes_from_training_images_only(make_wbc):
    root = make_wbc(per_class=12, classes=("alpha", "beta"))
    result = run_training(build_config(None, tiny_overrides(root, normalize="dataset", epochs=1)))
    spec = InputSpec(image_size=32)
    train = preload(result.data.split("train"), result.classes, spec)
    everything = preload(result.data.table, result.classes, spec)
    expected = spec.network_input(train.images, train.regions).mean(dim=(0, 2, 3))
    overall = spec.network_input(everything.images, everything.regions).mean(dim=(0, 2, 3))
    assert torch.allclose(result.model.preprocess.mean.flatten(), expected, atol=1e-5)
    assert not torch.allclose(expected, overall, atol=1e-4)


def test_colour_spaces_and_stain_normalisation():
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = 1.0  # pure red
    assert torch.allclose(rgb_to_hsv(x)[0, :, 0, 0], torch.tensor([0.0, 1.0, 1.0]))
    assert torch.equal(Preprocess(InputSpec(color_space="bgr", normalize="per_image")).colour(x), x.flip(1))
    grey = Preprocess(InputSpec(color_space="gray")).colour(x)
    assert torch.allclose(grey[0, 0], grey[0, 2]) and float(grey[0, 0, 0, 0]) == pytest.approx(0.299)
    bgr = InputSpec(color_space="bgr", mean=(0.1, 0.2, 0.3), std=(1, 2, 3))
    assert list(fit_input_spec(bgr, x).mean) == pytest.approx([0.3, 0.2, 0.1])
    pale = torch.rand(4, 3, 8, 8) * 0.2 + 0.6
    dark = pale * 0.6
    grey_world = Preprocess(InputSpec(stain_norm="grey_world")).colour(pale)
    channel_means = grey_world.mean(dim=(2, 3))
    assert torch.allclose(channel_means, channel_means.mean(dim=1, keepdim=True), atol=0.02)
    reinhard = Preprocess(fit_input_spec(InputSpec(stain_norm="reinhard", mean=(0.5,) * 3, std=(0.5,) * 3), pale))
    assert torch.allclose(reinhard.colour(dark).mean(), pale.mean(), atol=0.05)  # dark stain mapped to the reference


@pytest.mark.parametrize("finetune", ["last", "all"])
def test_finetuning_trains_backbone_layers(make_wbc, finetune):
    root = make_wbc(per_class=10)
    config = build_config(None, tiny_overrides(root, finetune=finetune, freeze_epochs=1, epochs=2, patience=0))
    torch.manual_seed(config.seed)  # run_training seeds the same way before building: identical initial weights
    before = {k: v.clone() for k, v in create_backbone(TINY_BACKBONE, pretrained=False).state_dict().items()}
    result = run_training(config)
    after = result.model.backbone.state_dict()
    changed = [k for k in before if k in after and before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])]
    assert changed
    if finetune == "last":
        assert not any(k.startswith("body.conv_stem") for k in changed)


def test_without_restore_best_the_last_epoch_is_kept():
    torch.manual_seed(0)
    features = torch.randn(1, 40, 8)
    labels = (features[0, :, 0] > 0).long()
    val = torch.randn(10, 8)
    val_labels = torch.randint(0, 2, (10,))
    finals = {}
    for restore in (True, False):
        torch.manual_seed(1)
        head = Head(8, 2)
        settings = TrainSettings(epochs=6, batch_size=8, lr=0.5, seed=0, restore_best=restore)
        trainer = HeadTrainer(head, features, labels, val, val_labels, 2, settings)
        result = fit(trainer, settings)
        finals[restore] = (result, {k: v.clone() for k, v in head.state_dict().items()})
    best, last = finals[True], finals[False]
    assert [r.val_loss for r in best[0].history] == [r.val_loss for r in last[0].history]  # same training
    if best[0].best_epoch != 6:
        assert not torch.equal(best[1]["linear.weight"], last[1]["linear.weight"])


def test_ema_keeps_the_moving_average_of_the_weights_it_was_given():
    torch.manual_seed(0)
    features = torch.randn(1, 40, 8)
    labels = (features[0, :, 0] > 0).long()
    val, val_labels = torch.randn(10, 8), torch.randint(0, 2, (10,))
    torch.manual_seed(1)
    head = Head(8, 2)
    start = {k: v.clone() for k, v in head.state_dict().items()}
    settings = TrainSettings(epochs=4, batch_size=8, lr=0.5, seed=0, restore_best=False, ema=0.6)
    trainer = HeadTrainer(head, features, labels, val, val_labels, 2, settings)
    live = []
    step = trainer.optimise

    def recording(*args):
        loss = step(*args)
        live.append({k: v.clone() for k, v in head.state_dict().items()})
        return loss
    trainer.optimise = recording
    fit(trainer, settings)
    expected = start
    for t, weights in enumerate(live, start=1):  # timm's warmed-up decay: 0 at the first step, then up to 0.6
        decay = 0.0 if t == 1 else min(1 - t ** (-2 / 3), 0.6)
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in weights}
    assert len(live) == 20
    assert all(torch.allclose(head.state_dict()[k], expected[k], atol=1e-6) for k in expected)
    assert not torch.allclose(head.state_dict()["linear.weight"], live[-1]["linear.weight"])  # not the last step's


def test_ema_runs_with_fine_tuning_and_is_logged(make_wbc):
    root = make_wbc(per_class=8)
    result = run_training(build_config(None, tiny_overrides(root, finetune="all", epochs=2, ema=0.9, patience=0)))
    import mlflow
    assert mlflow.get_run(result.run_id).data.params["ema"] == "0.9"
