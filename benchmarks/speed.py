"""CPU speed benchmark on real WBC images; one process, one invocation, ratios measured side by side.

    python benchmarks/speed.py [--data ../shared/data/wbc-zheng2018] [--out benchmarks/results/speed.json]

1. Feature extraction (bloodml's cached path: mask + preprocessing + channels_last, in the device's inference
   batches) vs plain model.eval() inference on the same 64 images in one batch, images/s per backbone.
2. Fine-tuning (finetune=all) images/s per backbone.
3. A 20-epoch frozen-backbone run with augmentation (resnet50, 128 px): cached features (cold disk cache, then
   warm) vs the naive loop that runs the backbone on every batch and every validation pass; same views, so the
   same test predictions. An untimed 1-epoch run comes first, so the process's one-time costs fall on neither.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bloodml.cache.store import clear_memory
from bloodml.config import build_config
from bloodml.inputs.dataset import preload
from bloodml.splitting.prepare import prepare
from bloodml.inputs.input_spec import InputSpec
from bloodml.inputs.transforms import Preprocess
from bloodml.evaluation.report import logits_of
from bloodml.models.head import Head
from bloodml.models.registry import create_backbone
from bloodml.runtime import configure
from bloodml.train import run_training
from bloodml.training.features import extract_features
from bloodml.training.loop import FinetuneSettings, FinetuneTrainer, TrainSettings

BACKBONES = ("efficientnet_lite0", "resnet50", "vgg16")


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def extraction(images, regions, size: int) -> dict:
    rows = {}
    for name in BACKBONES:
        backbone = create_backbone(name, pretrained=name.startswith("efficientnet"))
        spec = InputSpec(mask_mode="cell", mean=backbone.mean, std=backbone.std)
        preprocess = Preprocess(spec)
        x = preprocess(spec.network_input(images, regions))

        def plain():
            backbone.eval()
            with torch.no_grad():
                backbone(x)

        def ours():
            extract_features(backbone, preprocess, images, regions, spec, progress=False)  # its own batches

        t_plain, t_ours = timed(plain), timed(ours)
        rows[name] = {"plain_img_s": len(images) / t_plain, "bloodml_img_s": len(images) / t_ours,
                      "time_ratio_bloodml_over_plain": t_ours / t_plain}
        print(f"extract  {name:20} plain {len(images) / t_plain:7.1f} img/s   bloodml {len(images) / t_ours:7.1f} img/s"
              f"   ratio {t_ours / t_plain:.2f}", flush=True)
    return rows


def finetuning(train, val, size: int) -> dict:
    rows = {}
    for name in BACKBONES:
        backbone = create_backbone(name, pretrained=name.startswith("efficientnet"))
        settings = TrainSettings(epochs=1, batch_size=17, lr=1e-3, seed=0)
        small = train.subset(range(34))
        spec = InputSpec(mask_mode="cell", mean=backbone.mean, std=backbone.std)
        trainer = FinetuneTrainer(backbone, Preprocess(spec), Head(backbone.feature_dim, 4), small,
                                  val.subset(range(2)), spec, None, FinetuneSettings("all", 0, 0.1), 4, settings)
        seconds = timed(lambda: trainer.train_epoch(1), repeat=1)
        rows[name] = {"finetune_img_s": len(small) / seconds}
        print(f"finetune {name:20} {len(small) / seconds:7.1f} img/s (finetune=all, batch 17, {size} px)", flush=True)
    return rows


def frozen_run(data: str, workdir: Path) -> dict:
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'bench.db'}"
    common = {"data": data, "backbone": "resnet50", "pretrained": "false", "image_size": 128, "epochs": 20,
              "patience": 0, "masks": "cell", "cache_dir": str(workdir / "cache"), "gradcam_samples": 0,
              "experiment": "bloodml-benchmark"}
    results, predictions = {}, {}
    prepared = prepare(build_config(None, common), progress=False)
    test = preload(prepared.split("test"), prepared.classes, InputSpec(image_size=128, mask_mode="cell"))
    # one untimed 1-epoch run first, on its own cache: the process's one-time costs (lazy imports, the first model
    # export) then fall on neither timed path, where before they fell on whichever ran first (the cold run)
    run_training(build_config(None, {**common, "epochs": 1, "cache_dir": str(workdir / "warm_up_cache")}), data=prepared)
    for label, cache in (("cached_cold", "disk"), ("cached_warm", "disk"), ("naive", "off")):
        clear_memory()
        start = time.perf_counter()
        result = run_training(build_config(None, {**common, "feature_cache": cache}), data=prepared)
        seconds = time.perf_counter() - start
        predictions[label] = logits_of(result.model, test).softmax(1).numpy()
        results[label] = {"wall_s": seconds, "feature_s": result.metrics.get("feature_seconds", float("nan")),
                          "test_accuracy": result.metrics["test_accuracy"]}
        feature = results[label]["feature_s"]
        feature_text = f"{feature:6.1f}s" if feature == feature else "   n/a "  # the naive loop has no feature step
        print(f"run      {label:12} wall {seconds:7.1f}s  feature step {feature_text}  "
              f"test accuracy {result.metrics['test_accuracy']:.3f}", flush=True)
    results["speedup_cold_vs_naive"] = results["naive"]["wall_s"] / results["cached_cold"]["wall_s"]
    results["speedup_warm_vs_naive"] = results["naive"]["wall_s"] / results["cached_warm"]["wall_s"]
    results["warm_feature_step_share_of_cold"] = results["cached_warm"]["feature_s"] / results["cached_cold"]["feature_s"]
    results["max_abs_probability_difference_cached_vs_naive"] = float(
        np.abs(predictions["cached_cold"] - predictions["naive"]).max())
    results["same_test_predictions"] = bool((predictions["cached_cold"].argmax(1) == predictions["naive"].argmax(1)).all())
    return results


def main() -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/wbc-zheng2018")
    parser.add_argument("--out", default="benchmarks/results/speed.json")
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    threads = configure(0, 0)
    config = build_config(None, {"data": args.data})
    prepared = prepare(config, progress=False)
    train = preload(prepared.split("train"), prepared.classes, InputSpec(image_size=args.size), progress=False)
    val = preload(prepared.split("val"), prepared.classes, InputSpec(image_size=args.size), progress=False)
    batch = train.subset(range(64))
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": threads,
                          "torch": torch.__version__, "python": sys.version.split()[0]},
              "image_size": args.size}
    report["extraction"] = extraction(batch.images, batch.regions, args.size)
    report["finetuning"] = finetuning(train, val, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        report["frozen_20_epoch_run"] = frozen_run(args.data, Path(tmp))
    run = report["frozen_20_epoch_run"]
    print("\nsummary (ratios measured in this process)")
    print("  feature extraction time / plain inference time: "
          + ", ".join(f"{k} {v['time_ratio_bloodml_over_plain']:.2f}" for k, v in report["extraction"].items()))
    print(f"  20-epoch frozen resnet50 run, naive / cached: {run['speedup_cold_vs_naive']:.1f}x (cold cache), "
          f"{run['speedup_warm_vs_naive']:.1f}x (warm cache)")
    print(f"  warm feature step / cold feature step: {100 * run['warm_feature_step_share_of_cold']:.1f} %")
    print(f"  same test predictions cached vs naive: {run['same_test_predictions']} "
          f"(max |dp| {run['max_abs_probability_difference_cached_vs_naive']:.2e})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
