"""``bloodml segment``: train a cell segmenter (background / cytoplasm / nucleus) on a dataset's expert masks.

The same leak-proof split as classification (same seed, copies grouped), so a classifier trained on the same data
and seed never meets a test image its segmenter learnt from. Logged: every parameter, the split manifest,
per-epoch loss and validation Dice, Dice/IoU per region on validation and test with 95 % intervals, the overlay
gallery, and the segmenter itself (``runs:/<id>/segmenter``), optionally registered.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from . import __version__
from .compute import resolve as resolve_compute
from .config import RunConfig, command_parameters, format_value, section
from .inputs.dataset import ImageSet, preload
from .inputs.input_spec import InputSpec
from .data.images import read_rgb
from .data.masks import REGION_NAMES, parse_mask_codes, read_regions
from .splitting.prepare import PreparedData, prepare, read_labelled
from .splitting.splits import dataset_name, manifest
from .inputs.transforms import GEOMETRY, Augmentation
from .errors import BloodmlError
from .runtime import configure, say, show_progress
from .segmentation.gallery import save_gallery
from .segmentation.network import CellSegmenter, full_size
from .segmentation.scores import per_image, summarise
from .segmentation.source import loaded_segmenter, pinned
from .segmentation.training import SegmentSettings, fit_segmenter, predict_regions
from .tracking.backbones import backbone_from
from .tracking.buffer import MetricBuffer
from .tracking.model import log_segmenter
from .tracking.registry import register
from .tracking.runs import log_folder, log_metrics, log_params, log_split_manifest, set_description, set_tags, \
    tracked_run
from .tracking.store import configure_tracking, ui_hint

SPLITS = ("train", "val", "test")
# What a segmenter's training images go through (image and mask together); not a run parameter of `segment`.
SEGMENT_AUGMENTATION = Augmentation(rotation=180.0, shift=0.05, zoom=0.1, hflip=True, vflip=True, brightness=0.2)


def segment_params(config: RunConfig) -> dict[str, str]:
    """What a segmenter run logs: the run parameters `segment` reads, and the augmentation it ran."""
    params = config.to_params()
    ran = {name: getattr(SEGMENT_AUGMENTATION, name) for name in GEOMETRY}
    return {**{name: params[name] for name in command_parameters("segment")},
            **{name: format_value(value) for name, value in ran.items()}}


@dataclass
class SegmentResult:
    run_id: str
    metrics: dict
    model: CellSegmenter
    version: str | None = None


def masked_splits(data: PreparedData, spec: InputSpec, progress: bool) -> dict[str, tuple[ImageSet, list[str]]]:
    """Each split's images that have an expert mask, with their paths."""
    out = {}
    for split in SPLITS:
        table = data.split(split)
        table = table.loc[table["mask_path"].map(lambda m: isinstance(m, str) and bool(m))]
        out[split] = (preload(table, data.classes, spec, progress), list(table["path"]))
    if len(out["train"][0]) < 2:
        raise BloodmlError(f"data {data.root}: {len(out['train'][0])} training image(s) with an expert mask; a "
                           f"segmenter needs masks (give --masks_dir, or a dataset whose images have mask files).")
    return out


def regions_present(train: ImageSet) -> list[str]:
    """The region names the training masks contain (a binary cell mask has no nucleus)."""
    codes = set(int(v) for v in torch.unique(train.regions))
    names = {code: name for name, code in REGION_NAMES.items() if name != "cell"}
    return [names[c] for c in sorted(codes) if c in names]


def test_scores(model: CellSegmenter, split: ImageSet, name: str, n_boot: int, seed: int, compute):
    predicted = predict_regions(model, split.images, compute=compute).numpy()
    scores = per_image(predicted, split.regions.numpy())
    return predicted, scores, {f"{name}_{k}": v for k, v in summarise(scores, n_boot, seed).items()}


def run_segment(config: RunConfig, register_as: str = "", data: PreparedData | None = None) -> SegmentResult:
    progress = show_progress()
    threads = configure(config.threads, config.seed)
    compute = resolve_compute(config.device, config.precision)
    started = time.perf_counter()
    backbone = backbone_from(config.backbone, config.pretrained, config.weights)
    if not backbone.stages:
        raise BloodmlError(f"backbone '{config.backbone}' lists no encoder stages; use efficientnet_lite0, resnet50, "
                           f"vgg16 or a timm model with feature_info.")
    data = data or prepare(config, progress=progress)
    spec = InputSpec(image_size=config.image_size, mask_codes=config.mask_codes,
                     mask_stray_tolerance=config.mask_stray_tolerance)
    sets = masked_splits(data, spec, progress)
    train, val, test = (sets[s][0] for s in SPLITS)
    say(f"segment: {len(train)} training, {len(val)} validation, {len(test)} test images with expert masks "
        f"({len(data.table) - sum(len(sets[s][0]) for s in SPLITS)} without a mask left out); {config.backbone}, "
        f"{config.image_size} px, {compute.name}")
    torch.manual_seed(config.seed)
    model = CellSegmenter(backbone)
    settings = section(config, SegmentSettings)

    uri = configure_tracking()
    with tracked_run(config.experiment, config.run_name or f"segment-{config.backbone}", None,
                     {"bloodml.task": "segment"}) as run:
        log_params(segment_params(config))
        set_tags({"device_name": compute.name, "precision_used": compute.precision,
                  "threads": str(threads)})
        log_split_manifest(manifest(data.table, str(data.root)), dataset_name(config.data), str(data.root))
        buffer = MetricBuffer(run.info.run_id)

        def on_epoch(epoch: int, record: dict) -> None:
            buffer.log({k: v for k, v in record.items() if k not in ("epoch", "seconds")}, epoch)
            say(f"epoch {epoch}/{settings.epochs}  train_loss={record['train_loss']:.4f}  "
                f"val_cell_dice={record['val_cell_dice']:.3f} val_nucleus_dice={record['val_nucleus_dice']:.3f}  "
                f"({record['seconds']:.1f}s)")

        fit_segmenter(model, train, val, SEGMENT_AUGMENTATION, settings, compute, on_epoch)
        buffer.flush()
        metrics: dict[str, float] = {}
        _, _, val_metrics = test_scores(model, val, "val_final", config.bootstrap, config.seed, compute)
        predicted, scores, test_metrics = test_scores(model, test, "test", config.bootstrap, config.seed, compute)
        metrics.update(val_metrics)
        metrics.update(test_metrics)
        metrics.update({f"n_{s}": float(len(sets[s][0])) for s in SPLITS})
        metrics["train_seconds"] = time.perf_counter() - started
        log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            if len(test):
                save_gallery(test.images.permute(0, 2, 3, 1).numpy(), test.regions.numpy(), predicted,
                             scores["cell_dice"], sets["test"][1], Path(tmp) / "overlay_gallery.png")
            log_folder(tmp, "evaluation")
        model = model.cpu().float().eval()
        example = test.images[:2].float().div(255) if len(test) else torch.rand(2, 3, config.image_size,
                                                                               config.image_size)
        hashes = sorted(data.split("train")["sha256"]) if "sha256" in data.table.columns else []
        log_segmenter(model, example, {"image_size": config.image_size, "backbone": config.backbone,
                                       "regions": regions_present(train), "bloodml_version": __version__,
                                       "trained_on_sha256": hashes})
        version = register(run.info.run_id, register_as, alias="champion", artifact="segmenter") if register_as \
            else None
        dice = dice_line(metrics)
        set_description(f"Segmenter (**{config.backbone}** encoder, {config.image_size} px) on "
                        f"{dataset_name(config.data)}: {len(train)} training, {len(val)} "
                        f"validation, {len(test)} test images.\n\n{dice}.\n\nOverlays: evaluation/overlay_gallery.png; "
                        f"model: runs:/{run.info.run_id}/segmenter.\n")
        say(f"{dice}; segmenter runs:/{run.info.run_id}/segmenter"
            + (f", registered as {register_as} version {version} (@champion)" if version else ""))
        say(f"see it: {ui_hint(uri)}")
    return SegmentResult(run.info.run_id, metrics, model, version)


def dice_line(metrics: dict) -> str:
    """Test Dice of the cell and the nucleus with their intervals."""
    def one(region: str) -> str:
        key = f"test_{region}_dice"
        return (f"{region} {metrics.get(key, float('nan')):.3f} ({metrics.get(key + '_ci_low', float('nan')):.3f}-"
                f"{metrics.get(key + '_ci_high', float('nan')):.3f})")
    return f"test Dice: {one('cell')}, {one('nucleus')}"


def score_segmenter(reference: str, config: RunConfig) -> dict[str, float]:
    """A logged segmenter on another dataset's expert masks (every image that has one, at the image's own size):
    Dice/IoU per region with 95 % intervals and the overlay gallery, logged as an evaluation run."""
    uri = configure_tracking()
    segmenter = loaded_segmenter(pinned(reference))
    table, fmt, root, notes = read_labelled(config)
    table = table.loc[table["mask_path"].map(lambda m: isinstance(m, str) and bool(m))].reset_index(drop=True)
    if not len(table):
        raise BloodmlError(f"data {config.data}: no image has an expert mask to score the segmenter against.")
    codes = parse_mask_codes(config.mask_codes) if config.mask_codes else None
    size = config.image_size
    small_images, small_expert, small_drawn, all_scores = [], [], [], []
    for path, mask in zip(table["path"], table["mask_path"]):
        rgb = read_rgb(path)
        expert, _ = read_regions(mask, rgb.shape[:2], codes, config.mask_stray_tolerance)
        drawn = segmenter(rgb)
        all_scores.append(per_image(drawn[None], expert[None]))
        small_images.append(np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR)))
        small_expert.append(full_size(expert, (size, size)))
        small_drawn.append(full_size(drawn, (size, size)))
    scores = {k: np.concatenate([s[k] for s in all_scores]) for k in all_scores[0]}
    metrics = {f"eval_{k}": v for k, v in summarise(scores, config.bootstrap, config.seed).items()}
    metrics["eval_images"] = float(len(table))
    with tracked_run(config.experiment, config.run_name or f"segment-score-{Path(str(config.data)).name}", None,
                     {"bloodml.task": "segment-evaluate", "model": segmenter.uri}):
        log_params({"model": segmenter.uri, "data": config.data, "format": fmt})
        log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            save_gallery(np.stack(small_images), np.stack(small_expert), np.stack(small_drawn), scores["cell_dice"],
                         list(table["path"]), Path(tmp) / "overlay_gallery.png", what="images")
            pd.DataFrame({"file": table["path"], **scores}).to_csv(Path(tmp) / "per_image.csv", index=False)
            log_folder(tmp, "evaluation")
    low = float((scores["cell_dice"] < 0.8).mean())
    say(f"{segmenter.uri} on {config.data}: Dice cell {metrics['eval_cell_dice']:.3f} "
        f"({metrics['eval_cell_dice_ci_low']:.3f}-{metrics['eval_cell_dice_ci_high']:.3f}), nucleus "
        f"{metrics['eval_nucleus_dice']:.3f} ({metrics['eval_nucleus_dice_ci_low']:.3f}-"
        f"{metrics['eval_nucleus_dice_ci_high']:.3f}); {low:.0%} of {len(table)} images have cell Dice < 0.8")
    say(f"see it: {ui_hint(uri)}")
    return metrics
