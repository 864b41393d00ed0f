"""Evaluate one trained model on its validation and test splits and write every artefact into a folder.

Pure of MLflow: the caller logs the folder. Files: metrics.json, predictions_{val,test}.csv, history.csv,
learning_curves.png, confusion_matrix.{png,csv}, reliability.{png,csv}, roc.{png,csv} (binary),
misclassified.png, gradcam.png + saliency.csv (when masks exist), summary.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from sklearn import metrics as skm

from ..compute import CPU, Compute
from ..inputs.dataset import ImageSet
from . import plots
from .calibration import expected_calibration_error, fit_temperature, reliability_bins
from .calls import CallRule
from .metrics import majority_rate
from .saliency import gradcam_maps, image_scores, saliency_scores
from .scoring import confusion_frame, predictions_frame, score, source_scores


@dataclass(frozen=True)
class EvaluationSettings:
    rule: CallRule = CallRule()  # how probabilities become calls (positive class, threshold, group pooling)
    temperature_scaling: bool = False
    gradcam_samples: int = 12
    n_boot: int = 1000
    seed: int = 0
    plots: bool = True  # False: metrics and predictions only (fast, for the many runs of a study)
    compute: Compute = CPU


@torch.no_grad()
def logits_of(model, images: ImageSet, batch: int | None = None, compute: Compute = CPU) -> torch.Tensor:
    """The model's scores (logits; with TTA the log of the views' mean probability) for preloaded images, made
    into network input by the model's own input spec, computed on ``compute`` in batches of ``batch`` (default: the
    device's inference batch); float32 on the CPU."""
    batch = batch or compute.inference_batch
    model.eval().to(compute.device)
    parts = []
    for i in range(0, len(images), batch):
        x = model.spec.network_input(compute.put(images.images[i:i + batch]), compute.put(images.regions[i:i + batch]))
        n = len(x)
        with compute.autocast():
            parts.append(model.scores(compute.padded(x, batch))[:n].float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0, len(model.class_names))


def _hwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


@dataclass(frozen=True)
class Splits:
    """The validation and test splits a run is scored on (split name -> value): the preloaded images, their files
    and, when the data has groups, one ID per image whose groups the intervals resample whole (``resample``: copies
    and patients) and the user's group of each image, called one by one (``group_ids``)."""

    sets: dict[str, ImageSet]
    paths: dict[str, list[str]]
    resample: dict = field(default_factory=dict)
    group_ids: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)  # several sources: each image's source (scores per source too)
    pooled: dict = field(default_factory=dict)  # a patient model's group probabilities: {split: {group: (C,)}}


def evaluate(model, splits: Splits, history: list, best_epoch: int, settings: EvaluationSettings, out: Path,
             scores: Callable[[str], torch.Tensor] | None = None) -> dict[str, float]:
    """All metrics (val_final_*, test_*, calibration, saliency) and artefacts for a trained model; with group IDs,
    one call per group too, group-level metrics (``*_group_*``, ``*_groups``) and ``groups_<split>.csv``.
    ``scores(split)``: the model's scores on a split when the caller has them cheaper than a pass over its images
    (a frozen backbone's cached features); by default the model runs on the images."""
    sets, paths, groups, group_ids = splits.sets, splits.paths, splits.resample, splits.group_ids
    out.mkdir(parents=True, exist_ok=True)
    classes = list(model.class_names)
    metrics: dict[str, float] = {}
    binary = len(classes) == 2
    rule = settings.rule
    positive = (1 if rule.positive is None else rule.positive) if binary else None

    scores = scores or (lambda split: logits_of(model, sets[split], compute=settings.compute))
    val_logits = scores("val") if len(sets["val"]) else None
    if settings.temperature_scaling and val_logits is not None:
        temperature = fit_temperature(val_logits, sets["val"].labels)
        model.temperature.fill_(temperature)
        metrics["temperature"] = temperature

    predictions = {}
    for split, prefix in (("val", "val_final_"), ("test", "test_")):
        if not len(sets[split]):  # no validation split (fixed epochs) or no test split (a refit on all the data)
            continue
        logits = val_logits if split == "val" else scores(split)
        probabilities = torch.softmax(logits / float(model.temperature), dim=1).numpy()
        labels = sets[split].labels.numpy()
        scored = score(labels, probabilities, classes, prefix, rule, settings.n_boot, settings.seed,
                       resample=groups.get(split), group_ids=group_ids.get(split), pooled=splits.pooled.get(split))
        metrics.update(scored.metrics)
        metrics.update(source_scores(labels, probabilities, rule, splits.sources.get(split, ()), prefix))
        metrics[f"{split}_majority_rate"] = majority_rate(labels)
        metrics[f"{split}_ece"] = expected_calibration_error(labels, probabilities)
        predictions[split] = (labels, probabilities, scored)
        predictions_frame(paths[split], labels, probabilities, classes, scored.predicted).to_csv(
            out / f"predictions_{split}.csv", index=False)
        if scored.groups is not None:
            scored.groups.to_csv(out / f"groups_{split}.csv", index=False)

    if not settings.plots or "test" not in predictions:
        if settings.plots:  # nothing held out: the learning curves are what there is to see
            write_history(history, best_epoch, out)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        return metrics
    labels, probabilities, scored = predictions["test"]
    predicted = scored.predicted
    write_history(history, best_epoch, out)
    confusion_frame(scored.confusion, classes).to_csv(out / "confusion_matrix.csv")
    plots.confusion(scored.confusion, classes, out / "confusion_matrix.png")
    bins = reliability_bins(labels, probabilities)
    pd.DataFrame(bins, columns=["low", "high", "count", "confidence", "accuracy"]).to_csv(out / "reliability.csv",
                                                                                         index=False)
    plots.reliability(bins, metrics["test_ece"], out / "reliability.png")
    if binary and "test_roc_auc" in metrics:
        fpr, tpr, thresholds = skm.roc_curve(labels == positive, probabilities[:, positive])
        pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds}).to_csv(out / "roc.csv", index=False)
        plots.roc(fpr, tpr, metrics["test_roc_auc"], (metrics["test_roc_auc_ci_low"], metrics["test_roc_auc_ci_high"]),
                  classes[positive], out / "roc.png",
                  (1 - metrics["test_specificity"], metrics["test_sensitivity"]))
    wrong = np.flatnonzero(predicted != labels)[:24]
    test = sets["test"]
    plots.gallery(_hwc(model.spec.network_input(test.images[wrong], test.regions[wrong]).mul(255).byte()),
                  [f"true {classes[labels[i]]}\npred {classes[predicted[i]]} ({probabilities[i].max():.2f})"
                   for i in wrong], out / "misclassified.png",
                  f"misclassified test images: {len(np.flatnonzero(predicted != labels))} of {len(labels)}")
    if settings.gradcam_samples and len(test):
        metrics.update(_saliency(model, test, paths["test"], classes, settings, out))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (out / "summary.md").write_text(summary_markdown(metrics, classes, best_epoch, binary, out))
    return metrics


def write_history(history: list, best_epoch: int, out: Path) -> None:
    history_rows = [asdict(h) if not isinstance(h, dict) else h for h in history]
    pd.DataFrame(history_rows).to_csv(out / "history.csv", index=False)
    plots.learning_curves(history_rows, best_epoch, out / "learning_curves.png")


def _saliency(model, test: ImageSet, paths: list[str], classes: list[str], settings: EvaluationSettings,
              out: Path) -> dict[str, float]:
    rng = np.random.default_rng(settings.seed)
    sample = np.sort(rng.choice(len(test), size=min(settings.gradcam_samples, len(test)), replace=False))
    compute = settings.compute
    inputs = model.spec.network_input(compute.put(test.images[sample]), compute.put(test.regions[sample]))
    maps, predicted = gradcam_maps(model, inputs)
    regions = test.regions[sample].numpy()
    has_mask = test.has_mask[sample].numpy()
    scores = saliency_scores(maps, regions, has_mask)
    rows = []
    for k, i in enumerate(sample):
        scored = image_scores(maps[k], regions[k], has_mask[k])  # None or blank: nothing to report for the image
        rows.append({"file": paths[i], "predicted": classes[predicted[k]],
                     **{key: scored[key] if isinstance(scored, dict) else None
                        for key in ("relevance_mass", "pointing_hit", "chance")}})
    pd.DataFrame(rows).to_csv(out / "saliency.csv", index=False)
    captions = [f"{classes[predicted[k]]}" + (f"  mass {r['relevance_mass']:.2f}" if r["relevance_mass"] is not None
                                             else "") for k, r in enumerate(rows)]
    plots.gradcam_overlays(_hwc(test.images[sample]), maps, [r if m else None for r, m in zip(regions, has_mask)],
                           captions, out / "gradcam.png")
    return scores


def _fmt(metrics: dict, key: str) -> str:
    if key not in metrics:
        return "n/a"
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    return f"{metrics[key]:.3f}" + (f" ({low:.3f}-{high:.3f})" if low is not None else "")


def ci_basis(groups: float) -> str:
    """Which resampling the intervals rest on, in one sentence."""
    if groups:
        return (f"Intervals: 95 %, a bootstrap over {groups:.0f} groups (whole groups resampled: images of one "
                f"group are not independent).")
    return "Intervals: 95 %, Wilson for proportions, a bootstrap over images otherwise."


def summary_markdown(metrics: dict, classes: list[str], best_epoch: int, binary: bool, out: Path) -> str:
    headline = ["accuracy", "balanced_accuracy", "macro_f1", "mcc"] + (
        ["roc_auc", "sensitivity", "specificity"] if binary else [])
    lines = ["# Run summary", "", f"Classes: {', '.join(classes)}. Best epoch: {best_epoch}.", ""]
    if "test_groups" in metrics:  # one call per patient: what the clinician reads, so first
        group_rows = ["accuracy", "balanced_accuracy"] + (["roc_auc", "sensitivity", "specificity"] if binary else
                                                          ["macro_f1"])
        lines += [f"Per group ({metrics.get('val_final_groups', 0):.0f} validation, {metrics['test_groups']:.0f} test "
                  f"groups, one call each; intervals over groups):", "",
                  "| group-level metric (95% CI) | validation | test |", "|---|---|---|"]
        lines += [f"| {m} | {_fmt(metrics, 'val_final_group_' + m)} | {_fmt(metrics, 'test_group_' + m)} |"
                  for m in group_rows]
        lines += ["", "Per cell:", ""]
    lines += ["| metric (95% CI) | validation | test |", "|---|---|---|"]
    lines += [f"| {m} | {_fmt(metrics, 'val_final_' + m)} | {_fmt(metrics, 'test_' + m)} |" for m in headline]
    lines += [f"| majority-class rate | {_fmt(metrics, 'val_majority_rate')} | {_fmt(metrics, 'test_majority_rate')} |",
              f"| expected calibration error | {_fmt(metrics, 'val_ece')} | {_fmt(metrics, 'test_ece')} |", "",
              ci_basis(metrics.get("test_ci_groups", 0.0)), ""]
    sources = sorted(k[len("test_source_"):-len("_n")] for k in metrics if k.startswith("test_source_")
                     and k.endswith("_n"))
    if sources:  # several sources: each one's test images scored on their own
        lines += ["Test images per source (no intervals; the overall scores above carry them):", "",
                  "| source | images | accuracy | balanced accuracy | macro-F1 |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {metrics[f'test_source_{name}_n']:.0f} | "
                  + " | ".join(f"{metrics[f'test_source_{name}_{m}']:.3f}" for m in
                               ("accuracy", "balanced_accuracy", "macro_f1")) + " |" for name in sources]
        lines += [""]
    if "saliency_relevance_mass" in metrics:
        lines += [f"Grad-CAM on {metrics['saliency_images']:.0f} test images: relevance mass inside the cell "
                  f"{metrics['saliency_relevance_mass']:.3f} (chance {metrics['saliency_relevance_chance']:.3f}); "
                  f"pointing game {metrics['saliency_pointing_game']:.3f} (chance "
                  f"{metrics['saliency_pointing_chance']:.3f})."
                  + (f" {metrics['saliency_blank_maps']:.0f} blank map(s) left out." if metrics.get(
                      "saliency_blank_maps") else ""), ""]
    lines += [f"- [{name}]({name})" for name in sorted(p.name for p in out.iterdir()
                                                       if p.suffix in (".png", ".csv", ".json"))]
    return "\n".join(lines) + "\n"
