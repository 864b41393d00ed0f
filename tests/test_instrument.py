"""Issue 14: acquisition augmentation, its preset, and the domain-shift check."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from bloodml.config import build_config
from bloodml.inputs.acquisition import Acquisition, _hed_jitter
from bloodml.inputs.transforms import build_augmentation
from bloodml.errors import BloodmlError
from bloodml.evaluation.domain_shift import ShiftProfile, descriptors
from bloodml.train import run_training
from clihelp import run_cli
from conftest import tiny_overrides


def test_each_acquisition_change_alters_the_image_and_never_the_mask():
    images = torch.randint(30, 230, (4, 3, 32, 32), dtype=torch.uint8)
    regions = torch.randint(0, 3, (4, 32, 32), dtype=torch.uint8)
    plain = build_augmentation(0, 0, 0, 0, False, False, 0.0, Acquisition())
    assert plain is None  # every magnitude zero: no augmentation at all
    for name, value in {"gain": 0.3, "gamma": 0.3, "hed": 0.05, "hue": 0.1, "saturation": 0.5, "grey": 0.6,
                        "blur": 1.5, "resample": 0.6, "jpeg": 20}.items():
        augmentation = build_augmentation(0, 0, 0, 0, False, False, 0.0, Acquisition(**{name: value}))
        out, out_regions = augmentation(images, regions, torch.Generator().manual_seed(1))
        assert out.dtype == torch.uint8 and out.shape == images.shape
        assert (out.float() - images.float()).abs().mean() > 0.5, name
        assert torch.equal(out_regions, regions), name


def test_stain_space_round_trip_is_exact_and_acquisition_keeps_the_geometry_draws():
    x = torch.rand(2, 3, 8, 8) * 0.9 + 0.05
    same = _hed_jitter(x, torch.ones(2, 3), torch.zeros(2, 3))
    assert torch.allclose(same, x, atol=1e-5)
    geometric = build_augmentation(90, 0.05, 0, 0.1, True, True, 0.2)
    both = build_augmentation(90, 0.05, 0, 0.1, True, True, 0.2, Acquisition(gain=0.3))
    a, b = geometric.draw(5, torch.Generator().manual_seed(3)), both.draw(5, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the old runs' random draws are unchanged


def test_the_instrument_preset_expands_into_logged_parameters_and_explicit_values_win():
    config = build_config(None, {"augment_preset": "instrument", "aug_blur": "0.5"})
    assert config.aug_gain == 0.3 and config.aug_jpeg == 40 and config.aug_blur == 0.5
    assert config.to_params()["aug_hed"] == "0.05"
    assert build_config(None, {}).aug_gain == 0.0
    with pytest.raises(BloodmlError, match="augment_preset='lab' is not allowed"):
        build_config(None, {"augment_preset": "lab"})
    with pytest.raises(BloodmlError, match="aug_jpeg=120 is out of range"):
        build_config(None, {"aug_jpeg": "120"})


def test_shift_profile_flags_far_images_only():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 9))
    profile = ShiftProfile.fit(train)
    assert profile.report(rng.normal(size=(200, 9)))["shift_far_share"] < 0.05
    assert profile.report(rng.normal(size=(200, 9)) + 5)["shift_far_share"] > 0.95
    assert ShiftProfile.from_dict(profile.to_dict()) == profile
    sharp = torch.rand(3, 3, 32, 32)
    assert (descriptors(sharp)[:, 7] > descriptors(torch.full((3, 3, 32, 32), 0.5))[:, 7]).all()  # Laplacian energy


def test_predict_warns_on_another_instrument_and_not_on_its_own_images(make_wbc, tmp_path, capsys):
    root = make_wbc(per_class=10)
    trained = run_training(build_config(None, tiny_overrides(root, epochs=1, gradcam_samples=0)))
    run_cli(capsys, "predict", "-m", trained.run_id, root, "--pattern", "*.bmp", "-o", tmp_path / "same.csv")
    code, out, err = run_cli(capsys, "predict", "-m", trained.run_id, root, "--pattern", "*.bmp",
                             "-o", tmp_path / "same.csv")
    assert code == 0 and "warning:" not in out + err
    other = tmp_path / "other_instrument"
    other.mkdir()
    for path in sorted(root.glob("*.bmp")):  # another camera and stain: blurred, pink, darker
        image = Image.open(path).convert("RGB").filter(ImageFilter.GaussianBlur(1.5))
        array = np.asarray(image).astype(float) * np.array([1.0, 0.6, 0.9])
        Image.fromarray(array.clip(0, 255).astype(np.uint8)).save(other / path.name)
    code, out, err = run_cli(capsys, "predict", "-m", trained.run_id, other, "-o", tmp_path / "other.csv")
    assert code == 0 and "warning:" in out and "unlike what the model learnt from" in out


def test_cross_dataset_study_trains_on_one_dataset_and_scores_another(make_wbc, make_folders, tmp_path):
    from bloodml.study.runner import run_study
    from bloodml.study.spec import load_study

    source, other = make_wbc(per_class=12, classes=("alpha", "beta")), make_wbc(per_class=6, name="other_lab")
    (tmp_path / "other.yaml").write_text(f"data: {other}\nmin_class_count: 2\nnear_duplicate_distance: -1\n")
    (tmp_path / "run.yaml").write_text("".join(f"{k}: {v}\n" for k, v in tiny_overrides(source, epochs=1).items()))
    (tmp_path / "study.yaml").write_text(
        "name: xd\nrun: run.yaml\nsettings: {gradcam_samples: 0, bootstrap: 100}\n"
        "protocol: {type: cross_dataset, test: [other.yaml], repeats: 2}\n"
        "factors:\n  augment_preset: [none, instrument]\n")
    spec = load_study(tmp_path / "study.yaml")
    assert spec.protocol == "cross_dataset" and spec.tests == [str(tmp_path / "other.yaml")]
    gains = {c.factors["augment_preset"]: c.config.aug_gain for c in spec.configurations}
    assert gains == {"none": 0.0, "instrument": 0.3}  # the preset level brings its values
    result = run_study(spec, tmp_path / "report")
    for name, scores in result.scores.items():
        assert len(scores["macro_f1"]) == 2 and len(scores["in_domain_macro_f1"]) == 2
    resumed = run_study(spec, tmp_path / "again", resume=True)  # reuses the cross-dataset scores, not in-domain
    assert {n: s["macro_f1"] for n, s in resumed.scores.items()} == {n: s["macro_f1"] for n, s in result.scores.items()}
    report = (tmp_path / "report" / "study_report.md").read_text()
    assert "test on" in report and "in_domain_macro_f1" in report and "Does augment_preset matter?" in report


def test_manifest_query_keeps_matching_rows_and_a_bad_query_is_one_line(tmp_path):
    from bloodml.data.readers import ReaderOptions, read_manifest

    root = tmp_path / "m"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(root / name)
    (root / "cells.csv").write_text("image,label,granules\na.png,eosinophil,visible\nb.png,eosinophil,\n"
                                    "c.png,neutrophil,\n")
    query = "label != 'eosinophil' or granules == 'visible'"
    table = read_manifest(root / "cells.csv", ReaderOptions(format="manifest", manifest_query=query))
    assert sorted(Path(p).name for p in table["path"]) == ["a.png", "c.png"]
    with pytest.raises(BloodmlError, match="manifest_query .* failed .*use column names of the CSV"):
        read_manifest(root / "cells.csv", ReaderOptions(format="manifest", manifest_query="colour == 'x'"))


MEMORY_PROBE = """
import resource, sys, torch
from bloodml.config import build_config
from bloodml.inputs.dataset import ImageSet
from bloodml.inputs.input_spec import InputSpec
from bloodml.train import shift_profile
n = int(sys.argv[1])
images = torch.randint(0, 255, (n, 3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
none = torch.zeros(n, dtype=torch.bool)
train = ImageSet(images, torch.zeros(n, 128, 128, dtype=torch.uint8), none, none.long(), none.float(), none)
spec = InputSpec.from_config(build_config(None, {}), (0.5,) * 3, (0.25,) * 3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
shift_profile(spec, {"train": train, "test": train.subset(range(200))})
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_the_domain_shift_profile_of_a_large_pool_needs_little_memory():
    """Found by pretraining on 8,000 PBC cells (12 GB peak on a 24 GB machine): the profile turned every training
    image into float network input at once (its peak grew by 4.3 GB for these 3,000 images of 128 px, 600 MB as
    float input); a batch at a time, it grows by about half a gigabyte whatever the pool's size."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, "3000"], capture_output=True, text=True, check=True)
    grown_mb = float(done.stdout.strip().splitlines()[-1])
    assert grown_mb < 1200, f"shift_profile's peak grew by {grown_mb:.0f} MB"
