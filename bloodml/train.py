"""One configured training run, tracked in MLflow: data -> split -> what the network sees -> model -> fit ->
evaluate -> log.

:func:`run_training` reads as that list of steps; each step is a function below, and each lives on top of its
own module (data/, models/, training/, evaluation/, tracking/).
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from . import __version__
from .cache.keys import image_keys, model_key
from .cache.store import FeatureStore
from .compute import CPU, Compute, resolve as resolve_compute
from .config import RunConfig, section
from .inputs.acquisition import Acquisition
from .inputs.dataset import ImageSet, cell_free_note, preload, stray_note
from .inputs.input_spec import InputSpec
from .splitting.prepare import PreparedData, prepare
from .splitting.splits import dataset_name, manifest
from .inputs.transforms import Augmentation, Preprocess, effective, fit_input_spec
from .errors import BloodmlError
from .evaluation.calls import CallRule
from .evaluation.groups import group_line
from .evaluation.report import EvaluationSettings, Splits, evaluate
from .evaluation.domain_shift import ShiftProfile, input_descriptors
from .models.classifier import BloodCellClassifier, mean_probability_scores, tta_views
from .models.head import head_for
from .patients.steps import check_patients, fit_run_patients, needs_patient_model, write_patient_artefacts
from .parallel import parallel
from .runtime import configure, say, show_progress
from .segmentation.source import pinned, segmenter_for
from .tracking.backbones import backbone_from
from .tracking.buffer import MetricBuffer
from .serving.image_model import log_image_model
from .tracking.model import log_model
from .tracking.runs import end_active_run, log_folder, log_metrics, log_params, log_split_manifest, logged_steps, \
    resumed_run, set_description, set_tags, tracked_run
from .tracking.store import configure_tracking, ui_hint
from .training.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .training.features import FrozenFeatures, augmented_view
from .training.loop import EpochRecord, FinetuneSettings, FinetuneTrainer, FitResult, HeadTrainer, NaiveHeadTrainer, \
    TrainSettings, fit

SPLITS = ("train", "val", "test")


@dataclass
class TrainResult:
    run_id: str
    metrics: dict[str, float]
    best_epoch: int
    stopped_epoch: int
    classes: list[str]
    tracking_uri: str
    model: BloodCellClassifier
    data: PreparedData
    shift_profile: ShiftProfile | None = None
    sets: dict[str, ImageSet] | None = None  # the splits as the network saw them (few-shot studies reuse them)
    features: FrozenFeatures | None = None  # frozen backbone: its features through the cache


class StopRun(Exception):
    """Raised by an epoch hook to end a run early on purpose (e.g. an Optuna pruning decision)."""

    def __init__(self, reason: str, state: str = "PRUNED"):
        super().__init__(reason)
        self.state = state


# --- the settings each step needs, from the one configuration --------------------------------------------------
def augmentation(config: RunConfig) -> Augmentation | None:
    """The training images' augmentation: the augmentation group's geometry and acquisition (aug_*) changes."""
    if not config.augment:
        return None
    return effective(section(config, Augmentation, acquisition=section(config, Acquisition, prefix="aug_")))


def evaluation_settings(config: RunConfig, classes: list[str], plots: bool = True,
                        compute: Compute = CPU) -> EvaluationSettings:
    return EvaluationSettings(rule=CallRule.of_run(config, classes), temperature_scaling=config.temperature_scaling,
                              gradcam_samples=config.gradcam_samples if plots else 0, n_boot=config.bootstrap,
                              seed=config.seed, plots=plots, compute=compute)


# --- the steps ---------------------------------------------------------------------------------------------------
def build_backbone(config: RunConfig):
    """The configured backbone: a name, or a pretrained backbone's URI (``models:/bloodml-backbone@pbc``) brought
    to a local folder; a note when the run's input size differs from the one it was pretrained at."""
    backbone = backbone_from(config.backbone, config.pretrained, config.weights, config.features)
    if backbone.card is not None and backbone.card.input_size != config.image_size:
        say(f"note: {config.backbone} was pretrained at {backbone.card.input_size} px; this run uses image_size="
            f"{config.image_size}")
    return backbone


def masks_source(spec: InputSpec):
    """The spec with its segmenter pinned to the run that logged it, and the segmenter (None: expert masks)."""
    if not spec.segmented:
        return spec, None
    configure_tracking()  # the segmenter is read from the store
    spec = replace(spec, segmenter=pinned(spec.segmenter))
    return spec, segmenter_for(spec)


def load_splits(data: PreparedData, spec: InputSpec, progress: bool, segmenter=None) -> dict[str, ImageSet]:
    """Every split's images and region maps, decoded once at the spec's size and codes (the segmenter draws the
    maps the spec asks it for)."""
    every = preload(data.table, data.classes, spec, progress, segmenter)  # one pass: every bad file named at once
    sets = {name: every.subset((data.table["split"] == name).to_numpy().nonzero()[0]) for name in SPLITS}
    for note in (stray_note([every]), segmented_note(sets, segmenter, data), cell_free_note(data.table, spec, every)):
        if note:
            say(f"note: {note}")
    return sets


def segmented_note(sets: dict[str, ImageSet], segmenter, data: PreparedData) -> str:
    """How many region maps the segmenter drew, and any test image it was trained on (its masks are optimistic)."""
    if segmenter is None:
        return ""
    drawn = {name: int(s.segmented.sum()) for name, s in sets.items()}
    seen = sum(1 for h in data.split("test")["sha256"] if h in segmenter.trained_on) if "sha256" in data.table else 0
    text = (f"{segmenter.uri} drew the region maps of " + ", ".join(f"{n} {name}" for name, n in drawn.items())
            + " images")
    if seen:
        text += (f"; {seen} test image(s) were in its training set, so their masks are better than a new image's "
                 f"(a segmenter trained on this run's training split alone avoids it)")
    return text


def describe_data(data: PreparedData) -> None:
    for note in data.notes:
        say(f"note: {note}")
    counts = data.table.groupby(["split", "label"]).size()
    say(f"data: {len(data.table)} images, classes {', '.join(data.classes)}; "
        + "; ".join(f"{s} {int(counts[s].sum()) if s in counts.index.get_level_values(0) else 0}" for s in SPLITS))


def fitted_spec(spec: InputSpec, train: ImageSet) -> InputSpec:
    """What the network sees, with its statistics fitted on the training split only."""
    return fit_input_spec(spec, spec.network_input(train.images, train.regions))


@dataclass
class Built:
    """A run's trainer and, for a head on cached frozen-backbone features, those features and the seconds the
    feature step took (None otherwise: fine-tuning and the naive loop run the model on the images)."""

    trainer: object
    features: FrozenFeatures | None = None
    feature_seconds: float | None = None


def build_trainer(config: RunConfig, spec: InputSpec, backbone, head, train: ImageSet, val: ImageSet, classes,
                  progress, compute: Compute = CPU) -> Built:
    """Fine-tuning (on one process, or on each of torchrun's), or a head on frozen-backbone features (cached per
    augmented view, or the naive loop)."""
    settings = section(config, TrainSettings)
    transform = augmentation(config)
    preprocess = Preprocess(spec)
    if config.finetune != "none":
        return Built(FinetuneTrainer(backbone, preprocess, head, train, val, spec, transform,
                                     section(config, FinetuneSettings), len(classes), settings, compute=compute,
                                     processes=parallel()))
    views = config.aug_views if transform is not None else 1
    keys = image_keys(train.images, train.regions)
    if config.feature_cache == "off":
        view_images = [augmented_view(train.images, train.regions, transform, config.seed, v, keys, compute)
                       for v in range(views)]
        return Built(NaiveHeadTrainer(head, backbone, preprocess, view_images, spec, train.labels, val, len(classes),
                                      settings, compute))
    started = time.perf_counter()
    features = FrozenFeatures(FeatureStore(config.cache_dir or None, use_disk=config.feature_cache == "disk"),
                              model_key(config.backbone, backbone, preprocess, spec.mask_mode), backbone, preprocess,
                              spec, config.seed, compute, progress)
    train_features = torch.stack([features.of(train.images, train.regions, transform, v, keys,
                                              desc=f"features view {v + 1}/{views}") for v in range(views)])
    val_features = features.of(val.images, val.regions, desc="features val")
    seconds = time.perf_counter() - started
    say(f"features: {views} view(s) x {len(train)} training + {len(val)} validation images in "
        f"{seconds:.1f}s ({features.store.hits} cached, {features.store.misses} computed)")
    return Built(HeadTrainer(head, train_features, train.labels, val_features, val.labels, len(classes), settings,
                             compute), features, seconds)


@contextmanager
def open_run(config: RunConfig, parent_run_id: str | None, tags: dict | None, resume_run_id: str | None):
    run_name = config.run_name or f"{config.backbone}-{config.masks}"
    context = resumed_run(resume_run_id) if resume_run_id else tracked_run(config.experiment, run_name,
                                                                           parent_run_id, tags)
    with context as run:
        yield run


def log_run_inputs(config: RunConfig, data: PreparedData, threads: int, compute: Compute, tags: dict | None) -> None:
    """Every parameter, the tags the UI filters on, and the split manifest."""
    log_params(config.to_params())
    set_tags({"masks_used": str(config.masks != "none").lower(), "bloodml.task": "train", "data_format": data.format,
              "classes": ",".join(data.classes), "threads": str(threads), "device": str(compute.device),
              "device_name": compute.name, "precision_used": compute.precision,
              **(tags or {})})  # the caller's task tag (tune trial, study fold) wins
    log_split_manifest(manifest(data.table, str(data.root)), dataset_name(config.data), str(data.root))


def epoch_logger(total: int, buffer: MetricBuffer, hook=None):
    """Per epoch: metrics to MLflow (through the outage buffer), one plain line, then the hook."""
    def log(record: EpochRecord) -> None:
        buffer.log({"train_loss": record.train_loss, "train_accuracy": record.train_accuracy,
                    "val_loss": record.val_loss, "val_accuracy": record.val_accuracy,
                    "val_macro_f1": record.val_macro_f1, "val_balanced_accuracy": record.val_balanced_accuracy},
                   record.epoch)
        say(f"epoch {record.epoch}/{total}  train_loss={record.train_loss:.4f} train_acc={record.train_accuracy:.3f}  "
            f"val_loss={record.val_loss:.4f} val_acc={record.val_accuracy:.3f}  ({record.seconds:.1f}s)")
        if hook is not None:
            hook(record)
    return log


def fit_tracked(trainer, config: RunConfig, run_id: str, hook, resume_state: dict | None) -> FitResult:
    """Epochs with a checkpoint after each, metrics through the outage buffer; a resumed run first logs the
    checkpointed epochs MLflow had not received. A hook's :class:`StopRun` ends the run as KILLED."""
    buffer = MetricBuffer(run_id)
    logger = epoch_logger(config.epochs, buffer, hook)
    saved = checkpoint_path(run_id)
    if resume_state:
        done = logged_steps(run_id, "val_loss")
        for record in resume_state["history"]:
            if record["epoch"] not in done:
                logger(EpochRecord(**record))
        say(f"resuming run {run_id} after epoch {resume_state['epoch']}")
    try:
        result = fit(trainer, section(config, TrainSettings), logger, lambda state: save_checkpoint(saved, state),
                     resume_state)
    except StopRun as stop:
        set_tags({"bloodml.state": stop.state, "bloodml.stop_reason": str(stop)})
        end_active_run("KILLED")
        raise
    buffer.flush()  # every epoch's metrics are in MLflow before the run goes on (or a resume command is given)
    return result


def evaluate_and_log(model: BloodCellClassifier, config: RunConfig, data: PreparedData, sets, result: FitResult,
                     built: Built, plots: bool, compute: Compute) -> dict[str, float]:
    """Validation and test metrics with intervals (over groups when the data has them) and the artefacts."""
    metrics = {"best_epoch": float(result.best_epoch), "stopped_epoch": float(result.stopped_epoch)}
    if built.feature_seconds is not None:  # frozen backbone: the cached feature step
        metrics["feature_seconds"] = built.feature_seconds
    scored = ("val", "test")
    patients = run_patients(model, config, data, sets, result, built, compute)
    splits = Splits(sets, {s: list(data.split(s)["path"]) for s in scored},
                    {s: data.split(s)["group"].to_numpy() for s in scored} if config.group_column else {},
                    {s: data.split(s)["source_group"].to_numpy() for s in scored}
                    if config.group_column and "source_group" in data.table else {},
                    {s: data.split(s)["source"].to_numpy() for s in scored} if "source" in data.table else {},
                    patients.pooled if patients else {})
    with tempfile.TemporaryDirectory() as tmp:
        metrics.update(evaluate(model, splits, result.history, result.best_epoch,
                                evaluation_settings(config, data.classes, plots, compute), Path(tmp),
                                cached_scores(model, built, sets, compute)))
        if patients is not None:
            write_patient_artefacts(patients, sets, {s: list(data.split(s)["path"]) for s in scored}, Path(tmp),
                                    plots)
            with tempfile.TemporaryDirectory() as saved:  # beside the model: evaluate and predict read it back
                patients.model.save(Path(saved))
                log_folder(saved, "patient_model")
        log_folder(tmp, "evaluation")
        summary = Path(tmp) / "summary.md"  # not written without plots (a study's folds)
        set_description(run_description(config, data, summary.read_text() if summary.is_file() else "", metrics))
    metrics.update({f"n_{s}": float(len(sets[s])) for s in SPLITS})
    return metrics


def run_patients(model: BloodCellClassifier, config: RunConfig, data: PreparedData, sets: dict[str, ImageSet],
                 result: FitResult, built: Built, compute: Compute):
    """The patient model a learnt pooling or covariates need, fitted on the training patients (None otherwise)."""
    if not needs_patient_model(config):
        return None
    scores = cached_scores(model, built, sets, compute)

    def cell_probabilities(split: str):
        return torch.softmax(scores(split), dim=1).numpy()
    groups = {s: data.split(s)["source_group"].to_numpy() for s in SPLITS}
    return fit_run_patients(config, data.classes, sets, groups, built.features, built.trainer.train_features,
                            cell_probabilities, lambda: head_for(model.backbone, len(data.classes), config.dropout),
                            result.best_epoch, data.root, compute)


def cached_scores(model: BloodCellClassifier, built: Built, sets: dict[str, ImageSet], compute: Compute):
    """A frozen backbone's scores from its cached features: for the validation split the very features the head
    was checked on, for the test split features computed once through the cache (a warm run reads them). With
    test-time augmentation each view (flips, transpose) is another image to the content-keyed cache, computed once
    and averaged as the model averages it. None when the model has to run on the images: fine-tuned or the naive
    loop."""
    features, trainer = built.features, built.trainer
    if features is None:
        return None

    @torch.no_grad()
    def scores(split: str) -> torch.Tensor:
        head = model.head.eval().to(compute.device)
        views = (list(zip(tta_views(sets[split].images), tta_views(sets[split].regions))) if model.tta else
                 [(sets[split].images, sets[split].regions)])
        logits = []
        for index, (images, regions) in enumerate(views):
            cached = (trainer.validation_features() if split == "val" and index == 0 else
                      compute.put(features.of(images.contiguous(), regions.contiguous(), desc=f"features {split}")))
            with compute.autocast():
                logits.append(head(cached).float().cpu())
        return mean_probability_scores(logits) if model.tta else logits[0]
    return scores


def run_description(config: RunConfig, data: PreparedData, summary: str, metrics: dict[str, float]) -> str:
    """The run page's Description: what was trained on what, then the evaluation summary (without its file
    links: the artefacts sit under evaluation/), or the test scores where no summary was written."""
    training = (f"fine-tuned ({config.finetune})" if config.finetune != "none" else "frozen backbone, trained head")
    head = (f"**{config.backbone}**, {training}, {config.image_size} px, masks={config.masks}, seed {config.seed}, "
            f"on {dataset_name(config.data)}: " + ", ".join(f"{int((data.table['split'] == s).sum())} {s}"
                                                              for s in SPLITS) + " images.")
    body = [line for line in summary.splitlines() if not line.startswith("- [") and line != "# Run summary"]
    if not body and "test_accuracy" not in metrics:
        body = ["", "No test split: every image trained the model (a refit); its expected performance is the "
                    "cross-validation estimate it was chosen by."]
    if not body:
        body = ["", "Test: " + ", ".join(f"{name} {metrics[f'test_{name}']:.3f}" for name in
                                         ("accuracy", "balanced_accuracy", "macro_f1") if f"test_{name}" in metrics)
                + "."]
    return "\n".join([head, *body, "Artefacts: evaluation/summary.md and the plots and tables beside it."]).strip() + "\n"


def shift_profile(spec: InputSpec, sets: dict[str, ImageSet]) -> tuple[ShiftProfile, dict[str, float]]:
    """The training images' domain-shift profile, and the check on the run's own test split (about 1 % far)."""
    profile = ShiftProfile.fit(input_descriptors(spec, sets["train"].images, sets["train"].regions))
    if not len(sets["test"]):
        return profile, {}
    report = profile.report(input_descriptors(spec, sets["test"].images, sets["test"].regions))
    return profile, {f"test_{k}": v for k, v in report.items()}


def log_trained_model(model: BloodCellClassifier, config: RunConfig, test: ImageSet, profile: ShiftProfile,
                      test_files: pd.DataFrame) -> None:
    """The tensor-in model, exported on the CPU (PT2) whatever device trained it, so it loads anywhere; and the
    image-in model that serves it, with a test image (and its mask) as the input example."""
    example = model.spec.network_input(test.images[:2], test.regions[:2])
    info = log_model(model.cpu().float(), example, {
        "backbone": model.backbone.architecture, "backbone_source": config.backbone, "features": config.features,
        "bloodml_version": __version__,
        "tta": str(model.tta).lower(), "shift_profile": profile.to_dict(),
        **CallRule.of_run(config, model.class_names).metadata(model.class_names)})
    image, mask = example_files(test_files, model.spec)
    log_image_model(info.model_uri, model.class_names, model.spec, image, mask)


def example_files(files: pd.DataFrame, spec: InputSpec) -> tuple[bytes, bytes | None]:
    """A served model's input example: the bytes of a test image, and of its mask when the model is masked (an
    image that has one, unless a segmenter draws the masks)."""
    rows = files
    if spec.masked and not spec.segmented and "mask_path" in files:
        rows = files[files["mask_path"].map(lambda m: isinstance(m, str) and bool(m))]
    row = (rows if len(rows) else files).iloc[0]
    mask = row.get("mask_path") if spec.masked and spec.masks_from != "model" else None
    return Path(row["path"]).read_bytes(), Path(mask).read_bytes() if isinstance(mask, str) and mask else None


def network_and_splits(config: RunConfig, data: PreparedData | None, progress: bool, main: bool = True):
    """The backbone (built first: a missing weight fails fast), the data and its splits as the network sees them,
    the input spec fitted on the training split, and a new head. ``main``: say what the data holds."""
    backbone = build_backbone(config)
    data = data or prepare(config, progress=progress)
    if main:
        check_patients(config, data.table, data.classes, data.root)
        describe_data(data)
    spec, segmenter = masks_source(InputSpec.from_config(config, backbone.mean, backbone.std))
    sets = load_splits(data, spec, progress, segmenter)
    spec = fitted_spec(spec, sets["train"])
    torch.manual_seed(config.seed)
    return backbone, data, spec, sets, head_for(backbone, len(data.classes), config.dropout)


def follow(config: RunConfig, data: PreparedData | None, resume_state: dict | None) -> None:
    """A torchrun process other than the main one: the same data, split, model and epochs, its share of each
    epoch's batches, no MLflow and no checkpoints (the main process's checkpoint resumes every process)."""
    configure(config.threads, config.seed)
    compute = resolve_compute(config.device, config.precision)
    backbone, data, spec, sets, head = network_and_splits(config, data, False, main=False)
    built = build_trainer(config, spec, backbone, head, sets["train"], sets["val"], data.classes, False, compute)
    fit(built.trainer, section(config, TrainSettings), resume=resume_state)
    return None


def run_training(config: RunConfig, data: PreparedData | None = None, parent_run_id: str | None = None,
                 tags: dict | None = None, epoch_hook=None, log_trained: bool = True,
                 plots: bool = True, resume_run_id: str | None = None) -> TrainResult | None:
    """Train, evaluate and log one run. ``epoch_hook(record)`` may raise :class:`StopRun`: the run then ends as
    KILLED with the tag ``bloodml.state`` and the exception propagates. Every epoch leaves an atomic checkpoint;
    ``resume_run_id`` continues an interrupted run from its last complete epoch, into the same MLflow run. Under
    torchrun, the processes other than the main one train their share and return None."""
    resume_state = load_checkpoint(checkpoint_path(resume_run_id)) if resume_run_id else None
    processes = parallel()
    if processes.several and config.finetune == "none":
        raise BloodmlError("torchrun: a frozen backbone's head trains in seconds on one process; run it without "
                           "torchrun (several processes are for finetune=last or all, and pretrain).")
    if not processes.main:  # torchrun: the other processes train with the main one, which alone logs and saves
        return follow(config, data, resume_state)
    if processes.several:
        say(f"torchrun: {processes.world} processes, each a share of every epoch's batches (DDP, "
            f"{torch.distributed.get_backend()}); this one logs to MLflow and checkpoints")
    progress = show_progress()
    threads = configure(config.threads, config.seed)
    compute = resolve_compute(config.device, config.precision)
    started = time.perf_counter()
    backbone, data, spec, sets, head = network_and_splits(config, data, progress)

    uri = configure_tracking()  # only once the inputs are known good: bad input leaves no store behind
    with open_run(config, parent_run_id, tags, resume_run_id) as run:
        log_run_inputs(config, data, threads, compute, tags)
        built = build_trainer(config, spec, backbone, head, sets["train"], sets["val"], data.classes, progress,
                              compute)
        result = fit_tracked(built.trainer, config, run.info.run_id, epoch_hook, resume_state)
        model = BloodCellClassifier(spec, backbone, head, data.classes, tta=config.tta).eval()
        metrics = evaluate_and_log(model, config, data, sets, result, built, plots, compute)
        profile, shift = shift_profile(spec, sets)
        metrics.update(shift)
        metrics["train_seconds"] = time.perf_counter() - started
        log_metrics(metrics)
        if log_trained:
            shown = "test" if len(sets["test"]) else "train"  # a refit has no test split
            log_trained_model(model, config, sets[shown], profile, data.split(shown))
        checkpoint_path(run.info.run_id).unlink(missing_ok=True)  # finished: nothing left to resume
        if "test_group_accuracy" in metrics:
            say(group_line(metrics, "test_", config.group_column, config.group_aggregate))
        say(f"best epoch {result.best_epoch} (stopped at {result.stopped_epoch}); " + (
            f"test accuracy {metrics['test_accuracy']:.3f}, macro-F1 {metrics['test_macro_f1']:.3f} (majority rate "
            f"{metrics['test_majority_rate']:.3f})" if "test_accuracy" in metrics else "no test split")
            + f"; run {run.info.run_id}")
        say(f"see it: {ui_hint(uri)}")
    return TrainResult(run.info.run_id, metrics, result.best_epoch, result.stopped_epoch, data.classes, uri, model, data,
                       profile, sets, built.features)
