"""``bloodml pretrain``: fine-tune a backbone on a large labelled pool of cells (default: pbc, all 8 classes) and
log it as a *backbone* that any run, study, tune or segmenter can start from (``backbone=models:/<name>@<alias>``).

Steps: configure (recipe=pretrain under the user's values) -> train (the one training run: leak-proof split,
per-epoch progress, checkpoints, held-out test scores, the pool logged as the run's dataset) -> write the backbone
(weights + card: architecture, input size, mean/std, the pool's classes) -> log it into the run -> register it and
move the alias -> print its URI.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from .config import RunConfig, build_config
from .models.backbone_card import BackboneCard, save_backbone
from .runtime import say
from .splitting.splits import dataset_name
from .tracking.backbones import log_backbone, register_backbone
from .tracking.runs import set_tags
from .tracking.store import configure_tracking
from .train import TrainResult, run_training

DEFAULT_POOL = "pbc"
DEFAULT_NAME, DEFAULT_ALIAS = "bloodml-backbone", "pbc"


@dataclass
class PretrainResult:
    run_id: str
    uri: str  # models:/<name>@<alias>, or runs:/<id>/backbone when not registered
    card: BackboneCard
    metrics: dict


def pretrain_config(config_path: str | None, values: dict) -> RunConfig:
    """The pretrain recipe under the config file and the given values (data defaults to the pbc pool)."""
    given = {k: v for k, v in values.items() if v not in (None, "")}
    return build_config(config_path, {"recipe": "pretrain", "data": DEFAULT_POOL, **given})


def backbone_card(config: RunConfig, result: TrainResult) -> BackboneCard:
    backbone = result.model.backbone
    return BackboneCard(
        architecture=backbone.architecture, input_size=config.image_size, mean=tuple(backbone.mean),
        std=tuple(backbone.std), masks=config.masks, classes=tuple(result.classes), pool=dataset_name(config.data),
        trained={"run_id": result.run_id, "epochs": config.epochs, "finetune": config.finetune,
                 "test_accuracy": round(result.metrics["test_accuracy"], 4),
                 "test_macro_f1": round(result.metrics["test_macro_f1"], 4),
                 "from": config.backbone})


def run_pretrain(config: RunConfig, name: str = DEFAULT_NAME, alias: str = DEFAULT_ALIAS,
                 resume_run_id: str | None = None) -> PretrainResult | None:
    result = run_training(config, tags={"bloodml.task": "pretrain"}, log_trained=False, resume_run_id=resume_run_id)
    if result is None:  # torchrun: a process other than the main one trained its share; the main one registers
        return None
    configure_tracking()
    with tempfile.TemporaryDirectory() as tmp:
        card = save_backbone(result.model.backbone.body.cpu().float(), backbone_card(config, result), Path(tmp))
        uri = log_backbone(Path(tmp), result.run_id)
    set_tags({"backbone_sha256": card.weights_sha256, "backbone_uri": uri}, result.run_id)
    if name:
        version = register_backbone(result.run_id, name, alias, {"test_accuracy": card.trained["test_accuracy"],
                                                                 "pool": card.pool})
        uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
        say(f"registered {name} version {version}" + (f" as @{alias}" if alias else ""))
    say(f"backbone {card.architecture} fine-tuned on {card.pool} ({len(card.classes)} classes): held-out accuracy "
        f"{card.trained['test_accuracy']:.3f}; use it with backbone={uri}")
    print(uri)
    return PretrainResult(result.run_id, uri, card, result.metrics)
