"""A pretrained backbone as a folder: its weights and the card that says what it is and what it expects (timm's
``pretrained_cfg`` in spirit: architecture, input size, mean/std, interpolation), plus where it was trained. The
``pretrain`` command writes one; ``backbone=<folder>`` (or a logged backbone's ``models:/``/``runs:/`` URI, which
tracking/ downloads to such a folder) builds it again. No MLflow here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import BloodmlError

CARD = "backbone.json"
WEIGHTS = "weights.pt"
KIND = "bloodml-backbone"


@dataclass(frozen=True)
class BackboneCard:
    architecture: str  # a registered backbone or timm model name: what to build before loading the weights
    input_size: int  # the square input side it was trained at (pixels)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    masks: str = "none"  # what its images showed: none (the whole frame) or crop (cropped to the cell), ...
    classes: tuple[str, ...] = ()  # the pool's classes it was fine-tuned to tell apart
    pool: str = ""  # the dataset it was fine-tuned on
    weights_sha256: str = ""  # of weights.pt: the cache keys its features by every tensor, this names the file
    trained: dict = field(default_factory=dict)  # how: epochs, lr, held-out accuracy, run
    kind: str = KIND

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_backbone(body: torch.nn.Module, card: BackboneCard, folder: Path) -> BackboneCard:
    """``body``'s weights and the card (with the weights' hash) in ``folder``. Returns the card written."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in body.state_dict().items()}
    torch.save(state, folder / WEIGHTS)
    card = BackboneCard(**{**asdict(card), "weights_sha256": file_sha256(folder / WEIGHTS)})
    (folder / CARD).write_text(card.to_json())
    return card


def is_backbone_folder(reference: str) -> bool:
    return bool(reference) and (Path(reference) / CARD).is_file()


def read_card(folder: Path, reference: str = "") -> BackboneCard:
    """The card of a backbone folder; one line when the folder holds something else (a classifier, a segmenter)."""
    name = reference or str(folder)
    path = Path(folder) / CARD
    if not path.is_file():
        found = ", ".join(sorted(p.name for p in Path(folder).iterdir())[:4]) if Path(folder).is_dir() else "nothing"
        raise BloodmlError(f"backbone='{name}' is not a backbone (no {CARD}; it holds {found}): pass one that "
                           f"`bloodml pretrain` logged, e.g. models:/bloodml-backbone@pbc, or a backbone name.")
    try:
        values = json.loads(path.read_text())
        card = BackboneCard(**{**values, "mean": tuple(values["mean"]), "std": tuple(values["std"]),
                               "classes": tuple(values.get("classes", ()))})
    except (ValueError, TypeError, KeyError) as exc:
        raise BloodmlError(f"backbone='{name}': {CARD} is not a backbone card ({type(exc).__name__}: {exc}); log the "
                           f"backbone again with bloodml pretrain.")
    if card.kind != KIND:
        raise BloodmlError(f"backbone='{name}': {CARD} says kind={card.kind}, not {KIND}; pass a pretrained backbone.")
    if not (Path(folder) / WEIGHTS).is_file():
        raise BloodmlError(f"backbone='{name}': {WEIGHTS} is missing beside {CARD}; log the backbone again.")
    return card


def load_weights(folder: Path, card: BackboneCard, name: str) -> dict:
    """The state_dict, checked against the card's hash (a changed or truncated file is refused)."""
    path = Path(folder) / WEIGHTS
    if card.weights_sha256 and file_sha256(path) != card.weights_sha256:
        raise BloodmlError(f"backbone='{name}': {WEIGHTS} does not match the hash on its card; download it again.")
    return torch.load(path, map_location="cpu", weights_only=True)
