"""Fine-tuning throughput on whatever device is here: bloodml's trainer vs a bare PyTorch loop on the same model,
batch, image size and precision, measured in one process; then the wall time of a 20-epoch fine-tuning run.

    .venv/bin/python benchmarks/device.py                      # device=auto: the GPU if there is one
    .venv/bin/python benchmarks/device.py --size 224 --batch 128 --backbone resnet50 --pretrained false

Writes benchmarks/results/device.json. The bare loop is the plain recipe: uint8 batch -> float -> normalise ->
forward/backward/step under the same autocast, channels-last, no augmentation, no masks; bloodml's trainer also
augments every batch on the device (random affine with reflection, flips, brightness) and applies the mask mode.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bloodml.compute import resolve
from bloodml.config import build_config
from bloodml.inputs.dataset import preload
from bloodml.inputs.input_spec import InputSpec
from bloodml.splitting.prepare import prepare
from bloodml.inputs.transforms import Preprocess, build_augmentation
from bloodml.models.head import Head
from bloodml.models.registry import create_backbone
from bloodml.runtime import configure
from bloodml.train import run_training
from bloodml.training.loop import FinetuneSettings, FinetuneTrainer, TrainSettings

REPO = Path(__file__).resolve().parents[1]


def images_per_second(step, n_images: int, repeat: int) -> float:
    step()  # warm-up (kernels, allocator, autotuning)
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return n_images / best


def bloodml_epoch(train, val, args, compute):
    backbone = create_backbone(args.backbone, args.pretrained)
    spec = InputSpec(image_size=args.size, mean=backbone.mean, std=backbone.std)
    settings = TrainSettings(epochs=1, batch_size=args.batch, lr=5e-4, seed=0, optimizer="adamw",
                             weight_decay=1e-4)
    augmentation = build_augmentation(180, 0.05, 0, 0.15, True, True, 0.2)
    trainer = FinetuneTrainer(backbone, Preprocess(spec), Head(backbone.feature_dim, 4), train, val, spec,
                              augmentation, FinetuneSettings("all", 0, 1.0), 4, settings, compute=compute)
    return lambda: trainer.train_epoch(1)


def bare_epoch(train, args, compute):
    backbone = create_backbone(args.backbone, args.pretrained).to(compute.device, memory_format=torch.channels_last)
    head = torch.nn.Linear(backbone.feature_dim, 4).to(compute.device)
    optimiser = torch.optim.AdamW(list(backbone.parameters()) + list(head.parameters()), lr=5e-4,
                                  weight_decay=1e-4)
    scaler = compute.scaler()
    mean = torch.tensor(backbone.mean, device=compute.device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std, device=compute.device).view(1, 3, 1, 1)
    images, labels = train.images, train.labels

    def epoch():
        backbone.train()
        order = torch.randperm(len(images))
        for start in range(0, len(order), args.batch):
            idx = order[start:start + args.batch]
            x = compute.put(images[idx]).float().div_(255)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            y = compute.put(labels[idx])
            with compute.autocast():
                logits = head(backbone(x)).float()
            loss = F.cross_entropy(logits, y)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/wbc-zheng2018"))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--pretrained", default="true")
    parser.add_argument("--size", type=int, default=0, help="image size (default: 224 on a GPU, 128 on the CPU)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--run-epochs", type=int, default=20, help="epochs of the timed run (0: skip it)")
    args = parser.parse_args()
    args.pretrained = args.pretrained.lower() == "true"
    compute = resolve(args.device, args.precision)
    args.size = args.size or (224 if compute.device.type == "cuda" else 128)
    configure(0, 0)
    config = build_config(None, {"data": args.data, "near_duplicate_distance": -1})
    prepared = prepare(config, progress=False)
    spec = InputSpec(image_size=args.size)
    train = preload(prepared.split("train"), prepared.classes, spec, progress=False)
    val = preload(prepared.split("val"), prepared.classes, spec, progress=False).subset(range(4))
    print(f"device: {compute.name} ({compute.device}), precision {compute.precision}, {args.backbone}, "
          f"{args.size} px, batch {args.batch}, {len(train)} training images per epoch", flush=True)
    ours = images_per_second(bloodml_epoch(train, val, args, compute), len(train), args.repeat)
    bare = images_per_second(bare_epoch(train, args, compute), len(train), args.repeat)
    print(f"fine-tuning: bloodml {ours:.1f} img/s, bare PyTorch {bare:.1f} img/s, ratio {ours / bare:.2f}",
          flush=True)
    result = {"device": compute.name, "precision": compute.precision, "backbone": args.backbone, "size": args.size,
              "batch": args.batch, "bloodml_img_s": ours, "bare_img_s": bare, "ratio": ours / bare}
    out = REPO / "benchmarks/results/device.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))  # now, so a run cut short below keeps the throughput
    if args.run_epochs:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/bench.db"
            run = build_config(None, {"data": args.data, "recipe": "finetune", "epochs": args.run_epochs,
                                      "image_size": args.size, "backbone": args.backbone,
                                      "pretrained": str(args.pretrained).lower(), "device": args.device,
                                      "precision": args.precision, "gradcam_samples": 0,
                                      "experiment": "bloodml-benchmark"})
            started = time.perf_counter()
            trained = run_training(run, data=prepared)
            result["run_wall_s"] = time.perf_counter() - started
            result["run_test_macro_f1"] = trained.metrics["test_macro_f1"]
        print(f"{args.run_epochs}-epoch fine-tuning run (recipe=finetune): {result['run_wall_s']:.1f} s wall, "
              f"test macro-F1 {result['run_test_macro_f1']:.3f}", flush=True)
        out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
