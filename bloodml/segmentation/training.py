"""Training a segmenter: pixel-wise cross-entropy over background / cytoplasm / nucleus, images and masks
augmented together on the device, AdamW with a one-cycle schedule; Dice on validation every epoch."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..compute import CPU, Compute
from ..inputs.dataset import ImageSet
from ..inputs.transforms import Augmentation
from .cleanup import one_cell
from .network import CellSegmenter
from .scores import per_image


@dataclass(frozen=True)
class SegmentSettings:
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0


@torch.no_grad()
def predict_regions(model: CellSegmenter, images: torch.Tensor, batch: int = 32, compute: Compute = CPU) -> torch.Tensor:
    """uint8 images (N,3,S,S) -> region maps (N,S,S) uint8 (argmax over background / cytoplasm / nucleus, one
    cell kept per image as the logged segmenter gives it: :func:`one_cell`)."""
    model.eval().to(compute.device)
    out = []
    for start in range(0, len(images), batch):
        x = compute.put(images[start:start + batch]).float().div_(255.0)
        n = len(x)
        with compute.autocast():
            logits = model(compute.padded(x, batch))[:n]
        maps = logits.float().argmax(1).to(torch.uint8).cpu().numpy()
        out.append(torch.from_numpy(np.stack([one_cell(m) for m in maps])))
    return torch.cat(out) if out else torch.zeros((0, *images.shape[-2:]), dtype=torch.uint8)


@torch.no_grad()
def validation_scores(model: CellSegmenter, data: ImageSet, compute: Compute, batch: int = 32) -> dict[str, float]:
    """Validation loss and per-region Dice/IoU, from one forward pass per batch."""
    model.eval()
    losses, predicted = [], []
    for start in range(0, len(data), batch):
        x = compute.put(data.images[start:start + batch]).float().div_(255.0)
        with compute.autocast():
            logits = model(x).float()
        losses.append(float(F.cross_entropy(logits, compute.put(data.regions[start:start + batch]).long())) * len(x))
        predicted.append(logits.argmax(1).to(torch.uint8).cpu())
    if not predicted:
        return {"val_loss": float("nan")}
    scores = per_image(torch.cat(predicted).numpy(), data.regions.numpy())
    return {"val_loss": sum(losses) / len(data), **{f"val_{k}": float(v.mean()) for k, v in scores.items()}}


def fit_segmenter(model: CellSegmenter, train: ImageSet, val: ImageSet, augmentation: Augmentation | None,
                  settings: SegmentSettings, compute: Compute = CPU,
                  on_epoch: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train in place; returns one record per epoch (train_loss, val_loss, val Dice/IoU, seconds)."""
    model.to(compute.device)
    model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps = max(len(train) // settings.batch_size, 1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=settings.lr, total_steps=settings.epochs * steps,
                                                   pct_start=0.15, cycle_momentum=False)
    scaler = compute.scaler()
    rng = np.random.default_rng(settings.seed)
    images, regions = compute.resident(train.images), compute.resident(train.regions)
    history = []
    for epoch in range(1, settings.epochs + 1):
        start = time.perf_counter()
        model.train()
        draws = torch.Generator().manual_seed(settings.seed * 1000 + epoch)
        order = rng.permutation(len(train))
        losses = []
        for b in range(steps):  # full batches only: one shape, and never one image in batch norm
            index = compute.put(torch.as_tensor(order[b * settings.batch_size:(b + 1) * settings.batch_size]))
            x, y = compute.put(images[index]), compute.put(regions[index])
            if augmentation is not None:
                x, y = augmentation(x, y, draws)
            x = x.float().div_(255.0).contiguous(memory_format=torch.channels_last)
            with compute.autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y.long())
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            schedule.step()
            losses.append(loss.detach())
        record = {"epoch": epoch, "train_loss": float(torch.stack(losses).mean()),
                  **validation_scores(model, val, compute), "seconds": time.perf_counter() - start}
        history.append(record)
        if on_epoch:
            on_epoch(epoch, record)
    return history
