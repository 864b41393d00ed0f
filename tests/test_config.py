import pytest

from bloodml.config import RunConfig, build_config
from bloodml.errors import BloodmlError


def test_defaults_match_the_study():
    config = RunConfig()
    assert (config.epochs, config.batch_size, config.val_fraction, config.test_fraction) == (20, 17, 0.15, 0.15)
    assert config.pretrained is True and config.masks == "none" and config.finetune == "none"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("backbone: resnet50\nepochs: 7\nmasks: cell\npositive_classes: [a, b]\n")
    config = build_config(path, {"epochs": "3", "lr": "0.01", "data": None, "seed": ""})
    assert config.backbone == "resnet50" and config.masks == "cell"
    assert config.epochs == 3 and config.lr == 0.01 and config.seed == 42
    assert config.positive_classes == "a,b"


@pytest.mark.parametrize("overrides, fragment", [
    ({"epochs": "-1"}, "out of range"),
    ({"epochs": "2.5"}, "not a valid int"),
    ({"lr": "fast"}, "not a valid float"),
    ({"lr": "nan"}, "not a valid float"),
    ({"masks": "cells"}, "use one of none, cell, nucleus, background"),
    ({"pretrained": "maybe"}, "not a valid bool"),
    ({"bakbone": "vgg16"}, "did you mean 'backbone'"),
    ({"val_fraction": "0.5", "test_fraction": "0.5"}, "too little to train"),
])
def test_bad_parameters_give_one_line(overrides, fragment):
    with pytest.raises(BloodmlError) as caught:
        build_config(None, overrides)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_bad_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(BloodmlError, match="not valid YAML"):
        build_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("epoch: 3\n")
    with pytest.raises(BloodmlError, match="did you mean 'epochs'"):
        build_config(unknown)
    with pytest.raises(BloodmlError, match="file not found"):
        build_config(tmp_path / "missing.yaml")


def test_params_are_strings_mlflow_can_log():
    params = RunConfig().to_params()
    assert params["pretrained"] == "true" and params["epochs"] == "20" and all(isinstance(v, str) for v in params.values())
