"""The training loop: epochs, validation, early stopping with best-weights restore.

Three trainers share one loss/penalty/optimiser setup: :class:`HeadTrainer` trains the head on features computed
once per augmented view (frozen backbone), :class:`NaiveHeadTrainer` runs the frozen backbone on every batch
instead (the loop the cache replaces, for benchmarks), :class:`FinetuneTrainer` trains backbone layers on
augmented images.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..compute import CPU, Compute
from ..parallel import Parallel
from ..inputs.dataset import ImageSet
from ..inputs.input_spec import InputSpec
from ..inputs.transforms import Augmentation, Preprocess
from ..models.head import Head
from ..models.registry import Backbone
from ..confusion import accuracy_from, balanced_accuracy_from, confusion_counts, macro_f1_from
from .balancing import class_weights, epoch_indices, epoch_length
from .early_stopping import EarlyStopping
from .regularisation import penalised, penalty


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    balance: str = "none"
    balance_target: int = 0
    l1: float = 0.0
    l2: float = 0.0
    label_smoothing: float = 0.0
    patience: int = 0
    min_delta: float = 0.0
    seed: int = 0
    restore_best: bool = True
    optimizer: str = "adam"  # adam or adamw (decoupled weight decay)
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant, onecycle or cosine (per batch)
    warmup: float = 0.0  # share of all steps spent warming up (onecycle, cosine)
    ema: float = 0.0  # decay of the exponential moving average of the trained weights, per step (0: off)


@dataclass(frozen=True)
class FinetuneSettings:
    finetune: str = "all"  # last: the backbone's last block; all: the whole backbone
    freeze_epochs: int = 0  # head-only epochs first
    backbone_lr_factor: float = 0.1  # the backbone's learning rate = lr x this


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    val_balanced_accuracy: float
    seconds: float


def validation_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Plain cross-entropy (no smoothing, weights or penalty, so epochs and runs compare) and headline scores; NaN
    without validation images."""
    if not len(labels):
        return dict.fromkeys(("val_loss", "val_accuracy", "val_macro_f1", "val_balanced_accuracy"), float("nan"))
    cm = confusion_counts(labels.numpy(), logits.argmax(1).numpy(), logits.shape[1])
    return {"val_loss": float(F.cross_entropy(logits, labels)), "val_accuracy": accuracy_from(cm),
            "val_macro_f1": macro_f1_from(cm), "val_balanced_accuracy": balanced_accuracy_from(cm)}


@dataclass
class FitResult:
    history: list[EpochRecord]
    best_epoch: int
    stopped_epoch: int
    best_val_loss: float


def make_optimiser(groups: list[dict], settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    return torch.optim.Adam(groups, weight_decay=settings.weight_decay)


def make_schedule(optimiser: torch.optim.Optimizer, settings: TrainSettings, steps_per_epoch: int):
    """A per-batch learning-rate schedule over the whole run (None: constant)."""
    total = max(settings.epochs * max(steps_per_epoch, 1), 1)
    warm = settings.warmup
    if settings.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=[g["lr"] for g in optimiser.param_groups],
                                                   total_steps=total, pct_start=warm or 0.15,
                                                   anneal_strategy="cos", cycle_momentum=False)
    if settings.schedule == "cosine":
        warm_steps = int(round(warm * total))

        def factor(step: int) -> float:
            if step < warm_steps:
                return (step + 1) / warm_steps
            progress = (step - warm_steps) / max(total - warm_steps, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
    return None


class _Trainer:
    """Shared parts: the loss (class weights, label smoothing, L1/L2), the optimiser and its schedule, mixed
    precision, and the batching of one epoch."""

    def __init__(self, head: Head, train_labels: torch.Tensor, num_classes: int, settings: TrainSettings,
                 compute: Compute = CPU):
        self.head, self.settings, self.num_classes, self.compute = head, settings, num_classes, compute
        self.train_labels = train_labels
        self.rng = np.random.default_rng(settings.seed)
        weights = class_weights(train_labels.numpy(), num_classes) if settings.balance == "weights" else None
        self.weights = weights.to(compute.device) if weights is not None else None
        self.scaler = compute.scaler()
        self.schedule = None
        self.drop_last = False  # FinetuneTrainer: one batch shape, and no batch of one image in batch norm
        self.ema, self.ema_steps = None, 0
        head.to(compute.device)

    def validated(self) -> dict[str, float]:
        """The validation scores, NaN without validation images (fixed epochs: a refit, val_fraction=0)."""
        labels = self.val_labels if hasattr(self, "val_labels") else self.val.labels
        return self.validate() if len(labels) else validation_scores(torch.zeros(0, self.num_classes), labels)

    def averaged_module(self) -> nn.Module:
        """The module whose weights are trained (and averaged with ``ema``)."""
        return self.head

    def start_weight_average(self) -> None:
        """With ``settings.ema``, an exponential moving average of the trained weights (timm's ModelEmaV3, warmed
        up so a short run does not average its first, untrained steps)."""
        if self.settings.ema > 0:
            self.ema = ModelEmaV3(self.averaged_module(), decay=self.settings.ema, use_warmup=True)

    @contextmanager
    def averaged(self):
        """Inside, the modules hold the averaged weights (validation, the state early stopping keeps); the live
        weights come back on leaving. Without ``ema``, nothing changes."""
        if self.ema is None:
            yield
            return
        live = self.averaged_module()
        backup = {k: v.detach().clone() for k, v in live.state_dict().items()}
        live.load_state_dict(self.ema.module.state_dict())
        try:
            yield
        finally:
            live.load_state_dict(backup)

    def set_optimiser(self, groups: list[dict]) -> None:
        self.optimiser = make_optimiser(groups, self.settings)
        length = epoch_length(self.train_labels.numpy(), self.settings.balance, self.settings.balance_target)
        size = self.settings.batch_size
        steps = length // size if self.drop_last and length > size else math.ceil(length / size)
        self.schedule = make_schedule(self.optimiser, self.settings, steps)

    def data_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, weight=self.weights, label_smoothing=self.settings.label_smoothing)

    def trained_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def regularisation(self) -> torch.Tensor | float:
        if not (self.settings.l1 or self.settings.l2):  # the common case: no list of parameters walked per step
            return 0.0
        return penalty(penalised(self.trained_parameters()), self.settings.l1, self.settings.l2)

    def batches(self) -> list[np.ndarray]:
        order = epoch_indices(self.train_labels.numpy(), self.settings.balance, self.settings.balance_target, self.rng)
        size = self.settings.batch_size
        end = len(order) - len(order) % size if self.drop_last and len(order) > size else len(order)
        return [order[i:i + size] for i in range(0, end, size)]

    def optimise(self, optimiser: torch.optim.Optimizer, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One step; returns the data loss, still on the device (read once per epoch: no wait per batch)."""
        loss = self.data_loss(logits.float(), targets)
        total = loss + self.regularisation()
        optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(optimiser)
        self.scaler.update()
        if self.schedule is not None:
            self.schedule.step()
        if self.ema is not None:
            self.ema_steps += 1
            self.ema.update(self.averaged_module(), step=self.ema_steps)
        return loss.detach()

    def checkpoint_state(self) -> dict:
        """Everything needed to continue exactly: weights, optimiser, schedule, and every random generator."""
        state = {"model": self.state(), "optimiser": self.optimiser.state_dict(),
                 "numpy_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
        if self.schedule is not None:
            state["schedule"] = self.schedule.state_dict()
        if self.ema is not None:
            state["ema"] = {"weights": self.ema.module.state_dict(), "steps": self.ema_steps}
        return state

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        if self.schedule is not None and "schedule" in state:
            self.schedule.load_state_dict(state["schedule"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"]["weights"])
            self.ema_steps = state["ema"]["steps"]
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])

    @staticmethod
    def summarise(losses: list[torch.Tensor], sizes: list[int], correct) -> tuple[float, float]:
        """Mean loss and accuracy of an epoch; the one point where the host waits for the device."""
        n = sum(sizes)
        values = torch.stack(losses).double().cpu().numpy() if losses else np.zeros(0)
        return float(np.dot(values, sizes) / max(n, 1)), int(correct) / max(n, 1)


class HeadTrainer(_Trainer):
    """Frozen backbone: ``train_features`` is (views, N, D); each draw of an image picks one of its views."""

    def __init__(self, head: Head, train_features: torch.Tensor, train_labels: torch.Tensor,
                 val_features: torch.Tensor, val_labels: torch.Tensor, num_classes: int, settings: TrainSettings,
                 compute: Compute = CPU):
        super().__init__(head, train_labels, num_classes, settings, compute)
        self.train_features, self.val_features = compute.put(train_features), compute.put(val_features)
        self.val_labels = val_labels
        self.set_optimiser([{"params": list(head.parameters()), "lr": settings.lr}])
        self.start_weight_average()

    def trained_parameters(self):
        return list(self.head.parameters())

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        self.head.train()
        losses, sizes, correct = [], [], 0
        for index in self.batches():
            view = self.rng.integers(0, self.views, size=len(index))
            x = self.batch_features(view, index)
            y = self.compute.put(self.train_labels[torch.as_tensor(index)])
            logits = self.head(x)
            losses.append(self.optimise(self.optimiser, logits, y))
            sizes.append(len(index))
            correct += (logits.argmax(1) == y).sum()
        return self.summarise(losses, sizes, correct)

    @property
    def views(self) -> int:
        return self.train_features.shape[0]

    def batch_features(self, view: np.ndarray, index: np.ndarray) -> torch.Tensor:
        put = self.compute.put  # no wait for the device (a plain copy to a GPU would)
        return self.train_features[put(torch.as_tensor(view)), put(torch.as_tensor(index))]

    def validation_features(self) -> torch.Tensor:
        return self.val_features

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.head.eval()
        return validation_scores(self.head(self.validation_features()).float().cpu(), self.val_labels)

    def state(self) -> dict:
        return {k: v.detach().clone() for k, v in self.head.state_dict().items()}

    def load_state(self, state: dict) -> None:
        self.head.load_state_dict(state)


class NaiveHeadTrainer(HeadTrainer):
    """The loop the cache replaces: the frozen backbone runs on every batch and on the validation images every
    epoch. Same views, same draws, same head updates as :class:`HeadTrainer` (for benchmarks and equivalence)."""

    def __init__(self, head: Head, backbone: Backbone, preprocess: Preprocess, view_images: list, spec: InputSpec,
                 train_labels: torch.Tensor, val: ImageSet, num_classes: int, settings: TrainSettings,
                 compute: Compute = CPU):
        _Trainer.__init__(self, head, train_labels, num_classes, settings, compute)
        self.backbone, self.preprocess, self.view_images, self.spec, self.val = (
            backbone.to(compute.device), preprocess.to(compute.device), view_images, spec, val)
        self.val_labels = val.labels
        self.set_optimiser([{"params": list(head.parameters()), "lr": settings.lr}])
        self.start_weight_average()

    @property
    def views(self) -> int:
        return len(self.view_images)

    def _features(self, images, regions) -> torch.Tensor:
        with torch.no_grad():
            self.backbone.eval()
            x = self.preprocess(self.spec.network_input(self.compute.put(images), self.compute.put(regions)))
            with self.compute.autocast():
                return self.backbone(x.contiguous(memory_format=torch.channels_last)).float()

    def batch_features(self, view: np.ndarray, index: np.ndarray) -> torch.Tensor:
        images = torch.stack([self.view_images[v][0][i] for v, i in zip(view, index)])
        regions = torch.stack([self.view_images[v][1][i] for v, i in zip(view, index)])
        return self._features(images, regions)

    def validation_features(self) -> torch.Tensor:
        return self._features(self.val.images, self.val.regions)


class _Network(nn.Module):
    """Backbone then head, as one module (what DDP wraps)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class FinetuneTrainer(_Trainer):
    """Trains the last block (``finetune=last``) or the whole backbone (``all``) with the head, images augmented
    on the fly; the first ``freeze_epochs`` train the head alone."""

    def __init__(self, backbone: Backbone, preprocess: Preprocess, head: Head, train: ImageSet, val: ImageSet,
                 spec: InputSpec, transform: Augmentation | None, finetuning: FinetuneSettings, num_classes: int,
                 settings: TrainSettings, eval_batch: int | None = None, compute: Compute = CPU,
                 processes: Parallel = Parallel()):
        finetune, freeze_epochs = finetuning.finetune, finetuning.freeze_epochs
        super().__init__(head, train.labels, num_classes, settings, compute)
        self.processes = processes
        self.drop_last = True
        backbone.to(compute.device)
        preprocess.to(compute.device)
        train = ImageSet(*(compute.resident(t) for t in (train.images, train.regions)), train.has_mask,
                         compute.resident(train.labels))
        self.backbone, self.preprocess, self.train, self.val = backbone, preprocess, train, val
        self.spec, self.transform, self.finetune, self.freeze_epochs = spec, transform, finetune, freeze_epochs
        self.eval_batch = eval_batch or compute.inference_batch
        if finetune == "all":
            self.unfrozen = list(backbone.parameters())
            self.trainable_modules = [backbone]
        else:
            self.trainable_modules = [backbone.submodule(name) for name in backbone.last_block]
            self.unfrozen = [p for m in self.trainable_modules for p in m.parameters()]
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.set_optimiser([{"params": list(head.parameters()), "lr": settings.lr},
                            {"params": self.unfrozen, "lr": settings.lr * finetuning.backbone_lr_factor}])
        self.backbone.to(memory_format=torch.channels_last)
        self.modules_trained = nn.ModuleDict({"backbone": backbone, "head": head})
        self.network: nn.Module = _Network(backbone, head)
        if processes.several:  # DDP: the gradients averaged over the processes at every step
            for p in self.unfrozen:
                p.requires_grad_(True)
            self.network = DistributedDataParallel(
                self.network, device_ids=[compute.device.index] if compute.device.type == "cuda" else None,
                find_unused_parameters=freeze_epochs > 0)
        self.start_weight_average()

    def averaged_module(self) -> nn.Module:
        return self.modules_trained

    def trained_parameters(self):
        return list(self.head.parameters()) + [p for p in self.unfrozen if p.requires_grad]

    def _set_mode(self, epoch: int) -> None:
        active = epoch > self.freeze_epochs
        for p in self.unfrozen:
            p.requires_grad_(active)
        self.backbone.eval()  # frozen layers keep their running statistics
        if active:
            for module in self.trainable_modules:
                module.train()
        self.head.train()

    def _logits(self, images, regions) -> torch.Tensor:
        """Images and region maps already on the device -> logits (float32), under the run's precision."""
        x = self.preprocess(self.spec.network_input(images, regions)).contiguous(memory_format=torch.channels_last)
        with self.compute.autocast():
            return self.network(x).float()

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        self._set_mode(epoch)
        torch.manual_seed(self.settings.seed * 1000 + epoch)  # dropout
        draws = torch.Generator().manual_seed(self.settings.seed * 1000 + epoch)  # augmentation, same on any device
        losses, sizes, correct = [], [], 0
        for index in self.batches():
            idx = self.compute.put(torch.as_tensor(index))  # a plain copy to a GPU would wait for the last step
            images, regions = self.compute.put(self.train.images[idx]), self.compute.put(self.train.regions[idx])
            if self.transform is not None:  # on the device, the whole batch at once
                images, regions = self.transform(images, regions, draws)
            y = self.compute.put(self.train.labels[idx])
            logits = self._logits(images, regions)
            losses.append(self.optimise(self.optimiser, logits, y))
            sizes.append(len(index))
            correct += (logits.argmax(1) == y).sum()
        loss, accuracy = self.summarise(losses, sizes, correct)
        if self.processes.several:  # every process's share of the epoch, as one epoch
            n = float(sum(sizes))
            total_loss, total_correct, total_n = self.processes.total(loss * n, accuracy * n, n)
            loss, accuracy = total_loss / max(total_n, 1), total_correct / max(total_n, 1)
        return loss, accuracy

    def batches(self) -> list[np.ndarray]:
        return self.processes.shard(super().batches())

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.backbone.eval()
        self.head.eval()
        put = self.compute.put
        parts = []
        for i in range(0, len(self.val), self.eval_batch):
            images = put(self.val.images[i:i + self.eval_batch])
            n, pad = len(images), self.compute.padded
            parts.append(self._logits(pad(images, self.eval_batch),
                                      pad(put(self.val.regions[i:i + self.eval_batch]), self.eval_batch))[:n].cpu())
        logits = torch.cat(parts)
        return validation_scores(logits, self.val.labels)

    def state(self) -> dict:
        return {"head": {k: v.detach().clone() for k, v in self.head.state_dict().items()},
                "backbone": {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}}

    def load_state(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.backbone.load_state_dict(state["backbone"])


def fit(trainer, settings: TrainSettings, on_epoch: Callable[[EpochRecord], None] | None = None,
        checkpoint: Callable[[dict], None] | None = None, resume: dict | None = None) -> FitResult:
    """Run epochs until ``settings.epochs`` or early stopping; restore the best epoch's weights at the end.

    ``checkpoint(state)`` receives the complete state after every epoch (before ``on_epoch`` logs it);
    ``resume`` is such a state: training continues after its epoch exactly as if it had never stopped."""
    stopper = EarlyStopping(settings.patience, settings.min_delta)
    history: list[EpochRecord] = []
    first, evaluated = 1, None
    if resume:
        trainer.load_checkpoint_state(resume["trainer"])
        for key, value in resume["stopper"].items():
            setattr(stopper, key, value)
        history = [EpochRecord(**record) for record in resume["history"]]
        first = resume["epoch"] + 1
        if resume.get("stopped"):
            first = settings.epochs + 1
    for epoch in range(first, settings.epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc = trainer.train_epoch(epoch)
        with trainer.averaged():  # with ema: validated and kept for early stopping as averaged weights
            scores = trainer.validated()
            evaluated = trainer.state()
        record = EpochRecord(epoch, train_loss, train_acc, seconds=time.perf_counter() - start, **scores)
        history.append(record)
        stop = stopper.step(epoch, record.val_loss, evaluated)
        if checkpoint:
            checkpoint({"epoch": epoch, "stopped": stop, "trainer": trainer.checkpoint_state(),
                        "stopper": {"best_loss": stopper.best_loss, "best_epoch": stopper.best_epoch,
                                    "best_state": stopper.best_state, "bad_epochs": stopper.bad_epochs},
                        "history": [record.__dict__ for record in history]})
        if on_epoch:
            on_epoch(record)
        if stop:
            break
    if settings.restore_best:
        trainer.load_state(stopper.best_state)
    elif trainer.ema is not None and evaluated is not None:
        trainer.load_state(evaluated)  # the last epoch's averaged weights
    return FitResult(history, stopper.best_epoch, history[-1].epoch, stopper.best_loss)
