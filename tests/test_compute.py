"""Issue 12: one device and precision, resolved once and used by every path; CPU is a device like any other."""

import numpy as np
import pandas as pd
import pytest
import torch

from bloodml.compute import Compute, resolve, send
from bloodml.config import build_config
from bloodml.inputs.transforms import build_augmentation
from bloodml.errors import BloodmlError
from bloodml.train import run_training
from clihelp import run_cli
from conftest import tiny_overrides

HAS_CUDA = torch.cuda.is_available()
BF16_ON_CPU = torch.backends.mkldnn.is_available()


def test_auto_resolves_to_the_best_device_here():
    compute = resolve("auto", "auto")
    if HAS_CUDA:
        assert compute.device.type == "cuda" and compute.precision in ("bf16", "fp16")
    else:
        assert compute.device.type in ("cpu", "mps") and compute.precision == "fp32"
    assert resolve("cpu", "auto") == Compute(torch.device("cpu"), "fp32")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_or_a_bad_value_is_one_clear_line(make_wbc, capsys):
    with pytest.raises(BloodmlError, match="no CUDA GPU is available here"):
        resolve("cuda:0", "auto")
    with pytest.raises(BloodmlError, match="device='tpu' is unknown"):
        resolve("tpu", "auto")
    with pytest.raises(BloodmlError, match="precision=fp16 needs a GPU"):
        resolve("cpu", "fp16")
    code, _, err = run_cli(capsys, "train", "--data", make_wbc(per_class=4), "--device", "cuda",
                           "--near_duplicate_distance", "-1")
    assert code == 2 and err.startswith("error: device=cuda: no CUDA GPU") and "Traceback" not in err


def _every_path(root, tmp_path, capsys, device, precision):
    """Frozen (cached and naive), fine-tuned; then evaluate and predict on the result; Grad-CAM in the run."""
    results = {}
    for name, extra in {"frozen": {}, "naive": {"feature_cache": "off"},
                        "finetune": {"finetune": "all", "masks": "crop_cell"}}.items():
        config = build_config(None, tiny_overrides(root, device=device, precision=precision, epochs=2,
                                                   gradcam_samples=4, tta="true", **extra))
        results[name] = run_training(config)
        scored = results[name].metrics  # Grad-CAM ran on the masked test images (a tiny net's maps may be blank)
        assert scored["saliency_images"] + scored["saliency_blank_maps"] > 0 or name != "finetune"
    import mlflow

    run = mlflow.MlflowClient().get_run(results["finetune"].run_id)
    assert run.data.params["device"] == device and run.data.tags["precision_used"] == precision
    # evaluate scores the logged model, which runs on the CPU: it takes no --device (it read none)
    code, out, err = run_cli(capsys, "evaluate", "-m", results["frozen"].run_id, "--data", root,
                             "--near_duplicate_distance", "-1")
    assert code == 0, err
    code, out, err = run_cli(capsys, "predict", "-m", results["finetune"].run_id, root, "--masks-dir", root,
                             "--pattern", "*.bmp", "-o", tmp_path / "p.csv")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "p.csv")
    assert np.allclose(table.filter(like="p_").sum(axis=1), 1.0, atol=1e-4)
    return results


def test_every_path_runs_on_the_cpu_in_fp32(make_wbc, tmp_path, capsys):
    _every_path(make_wbc(per_class=8), tmp_path, capsys, "cpu", "fp32")


@pytest.mark.skipif(not BF16_ON_CPU, reason="this torch build has no bf16 autocast on the CPU")
def test_every_path_runs_under_bf16_autocast_on_the_cpu(make_wbc, tmp_path, capsys):
    results = _every_path(make_wbc(per_class=8), tmp_path, capsys, "cpu", "bf16")
    assert all(np.isfinite(r.metrics["test_loss"]) for r in results.values())


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")
def test_every_path_runs_on_cuda(make_wbc, tmp_path, capsys):
    _every_path(make_wbc(per_class=8), tmp_path, capsys, "cuda", "bf16" if torch.cuda.is_bf16_supported() else "fp16")


def test_augmentation_fills_corners_by_reflection_not_black():
    image = torch.full((16, 3, 48, 48), 210, dtype=torch.uint8)  # a pale background ...
    image[:, :, 16:32, 16:32] = 60  # ... around a dark cell
    regions = torch.zeros(16, 48, 48, dtype=torch.uint8)
    regions[:, 16:32, 16:32] = 2
    rotate = build_augmentation(rotation=45, shift=0.1, shear=10, zoom=0.2, hflip=True, vflip=True, brightness=0)
    out, out_regions = rotate(image, regions, torch.Generator().manual_seed(0))
    corners = torch.cat([out[:, :, :4, :4], out[:, :, :4, -4:], out[:, :, -4:, :4], out[:, :, -4:, -4:]], dim=2)
    # reflection shows background (or a mirrored cell) where zero padding showed black: no pixel is darker than
    # the darkest of the image itself
    assert int(corners.min()) >= 60 and int(out.min()) >= 60, int(out.min())
    assert (corners == 210).float().mean() > 0.5  # mostly the pale background
    assert set(out_regions.unique().tolist()) <= {0, 2}  # region codes stay codes (nearest neighbour)
    same = rotate(image, regions, torch.Generator().manual_seed(0))
    assert torch.equal(same[0], out)  # seeded: the same draws on every call and device


def test_recipes_expand_into_parameters_that_explicit_values_override(tmp_path):
    config = build_config(None, {"recipe": "finetune", "lr": "0.001"})
    assert (config.finetune, config.optimizer, config.schedule, config.tta, config.epochs) == \
        ("all", "adamw", "onecycle", True, 25)
    assert config.lr == 0.001  # the explicit value wins over the preset
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text("recipe: finetune\nepochs: 3\n")
    assert build_config(yaml_file).epochs == 3 and build_config(yaml_file).weight_decay == 1e-4
    assert build_config(None, {"recipe": "frozen"}).finetune == "none"
    with pytest.raises(BloodmlError, match="recipe='fast' is not allowed"):
        build_config(None, {"recipe": "fast"})


def test_one_cycle_and_cosine_schedules_warm_up_then_decay():
    from bloodml.training.loop import TrainSettings, make_schedule

    for schedule in ("onecycle", "cosine"):
        parameter = torch.nn.Parameter(torch.zeros(1))
        optimiser = torch.optim.AdamW([{"params": [parameter], "lr": 1e-3}])
        steps = make_schedule(optimiser, TrainSettings(epochs=10, batch_size=1, lr=1e-3, schedule=schedule,
                                                       warmup=0.2), steps_per_epoch=10)
        rates = []
        for _ in range(100):
            rates.append(optimiser.param_groups[0]["lr"])
            optimiser.step()
            steps.step()
        peak = int(np.argmax(rates))
        assert 15 <= peak <= 21 and rates[0] < 0.5 * max(rates) and rates[-1] < 0.05 * max(rates), schedule
        assert max(rates) == pytest.approx(1e-3, rel=1e-3)


def test_tta_averages_the_probabilities_of_flips_and_transpose():
    from bloodml.inputs.input_spec import InputSpec
    from bloodml.models.classifier import BloodCellClassifier
    from bloodml.models.head import Head
    from bloodml.models.registry import create_backbone
    from conftest import TINY_BACKBONE

    torch.manual_seed(0)
    backbone = create_backbone(TINY_BACKBONE, pretrained=False)
    plain = BloodCellClassifier(InputSpec(image_size=32), backbone, Head(backbone.feature_dim, 3), ["a", "b", "c"]).eval()
    tta = BloodCellClassifier(InputSpec(image_size=32), backbone, plain.head, ["a", "b", "c"], tta=True).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        views = [x, x.flip(-1), x.flip(-2), x.transpose(-1, -2)]
        expected = torch.stack([plain(v) for v in views]).mean(0)
        assert torch.allclose(tta(x), expected, atol=1e-6)
        assert not torch.allclose(plain(x), expected, atol=1e-4)


def test_one_batch_shape_on_a_gpu_changes_no_result():
    """On a GPU short batches are padded to one shape (each new shape costs the convolution libraries seconds of
    planning): the padded rows must change nothing. Forced on here with fixed_shapes=True."""
    from bloodml.inputs.dataset import ImageSet
    from bloodml.inputs.input_spec import InputSpec
    from bloodml.inputs.transforms import Preprocess
    from bloodml.evaluation.report import logits_of
    from bloodml.models.classifier import BloodCellClassifier
    from bloodml.models.head import Head
    from bloodml.models.registry import create_backbone
    from bloodml.training.features import extract_features

    torch.manual_seed(0)
    spec = InputSpec(image_size=32, mask_mode="cell")
    backbone = create_backbone("test_efficientnet", pretrained=False)
    images = torch.randint(0, 256, (11, 3, 32, 32), dtype=torch.uint8)
    regions = torch.randint(0, 3, (11, 32, 32), dtype=torch.uint8)
    padded = Compute(torch.device("cpu"), "fp32", fixed_shapes=True)
    assert padded.padded(images[:3], 8).shape[0] == 8 and resolve("cpu").padded(images[:3], 8).shape[0] == 3
    plain = extract_features(backbone, Preprocess(spec), images, regions, spec, batch_size=8, progress=False)
    fixed = extract_features(backbone, Preprocess(spec), images, regions, spec, batch_size=8, progress=False,
                             compute=padded)
    assert fixed.shape == plain.shape and torch.allclose(fixed, plain, atol=1e-5)
    model = BloodCellClassifier(spec, backbone, Head(backbone.feature_dim, 3), ["a", "b", "c"], tta=True)
    data = ImageSet(images, regions, torch.ones(11, dtype=torch.bool), torch.zeros(11, dtype=torch.long))
    plain = logits_of(model, data, batch=4)
    fixed = logits_of(model, data, batch=4, compute=padded)
    assert fixed.shape == (11, 3) and torch.allclose(fixed, plain, atol=1e-5)


def test_cpu_inference_runs_small_batches_with_the_same_results():
    """On the CPU, features and evaluation scores are computed 16 images at a time (faster per image there), a GPU
    keeps 64; splitting 40 images into batches of 16 gives the features one batch of 40 gives."""
    from bloodml.inputs.input_spec import InputSpec
    from bloodml.inputs.transforms import Preprocess
    from bloodml.models.registry import create_backbone
    from bloodml.training.features import extract_features

    assert resolve("cpu").inference_batch == 16
    assert Compute(torch.device("cuda"), "bf16").inference_batch == 64
    torch.manual_seed(0)
    spec = InputSpec(image_size=32, mask_mode="cell")
    backbone = create_backbone("test_efficientnet", pretrained=False)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    regions = torch.randint(0, 3, (40, 32, 32), dtype=torch.uint8)
    calls = []
    hook = backbone.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    small = extract_features(backbone, Preprocess(spec), images, regions, spec, progress=False)
    hook.remove()
    whole = extract_features(backbone, Preprocess(spec), images, regions, spec, batch_size=40, progress=False)
    assert calls == [16, 16, 8]
    assert torch.allclose(small, whole, atol=1e-6)


def test_fine_tuning_takes_full_batches_only_and_its_schedule_matches():
    """A short last batch is dropped when fine-tuning (one shape on a GPU; never one image in batch norm); the
    one-cycle schedule counts exactly the steps taken (OneCycleLR refuses a step past its total)."""
    from bloodml.inputs.dataset import ImageSet
    from bloodml.inputs.input_spec import InputSpec
    from bloodml.inputs.transforms import Preprocess
    from bloodml.models.head import Head
    from bloodml.models.registry import create_backbone
    from bloodml.training.loop import FinetuneSettings, FinetuneTrainer, TrainSettings

    spec = InputSpec(image_size=32)
    backbone = create_backbone("test_efficientnet", pretrained=False)
    n = 21
    data = ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8), torch.zeros(n, 32, 32, dtype=torch.uint8),
                    torch.zeros(n, dtype=torch.bool), torch.arange(n) % 3)
    settings = TrainSettings(epochs=2, batch_size=8, lr=1e-3, schedule="onecycle", optimizer="adamw")
    trainer = FinetuneTrainer(backbone, Preprocess(spec), Head(backbone.feature_dim, 3), data, data.subset(range(5)),
                              spec, build_augmentation(180, 0.05, 0, 0.1, True, True, 0.1),
                              FinetuneSettings("all", 0, 1.0), 3, settings)
    sizes = [len(b) for b in trainer.batches()]
    assert sizes == [8, 8]
    for epoch in (1, 2):
        loss, accuracy = trainer.train_epoch(epoch)
        assert np.isfinite(loss) and 0 <= accuracy <= 1
    assert trainer.schedule.last_epoch == 4  # two steps per epoch, two epochs: the schedule's very end


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if HAS_CUDA else []))
def test_send_copies_values_and_dtype_to_the_device(device):
    host = torch.tensor([[0.5, -1.25], [3.0, 7.5]], dtype=torch.float64)
    sent = send(host, torch.device(device), torch.float32)
    assert sent.device.type == device and sent.dtype == torch.float32
    assert torch.equal(sent.cpu(), host.float())  # the non-blocking copy has landed by the time it is read
    assert torch.equal(send(host, torch.device(device)).cpu(), host)  # no dtype: kept
    assert torch.equal(host, torch.tensor([[0.5, -1.25], [3.0, 7.5]], dtype=torch.float64))  # source untouched
