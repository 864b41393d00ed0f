"""The run configuration: one typed object built from defaults < YAML file < explicit overrides, validated once.

Every field is a user-facing parameter (an ``MLproject`` ``-P`` value, a ``bloodml train --option`` and a YAML key).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import BloodmlError


def _p(default, help: str, choices: tuple | None = None, low=None, high=None, group: str = ""):
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high,
                                            "group": group})


@dataclass(frozen=True)
class RunConfig:
    # --- recipe -----------------------------------------------------------------------------------------------
    recipe: str = _p("custom", "a named preset expanded into parameters (explicit values win; the run logs the "
                                "expanded values): frozen = today's frozen-backbone defaults, finetune = full "
                                "fine-tuning with AdamW, one-cycle schedule and test-time augmentation, pretrain = "
                                "what `bloodml pretrain` fine-tunes a backbone with on a large pool (128 px, 4 "
                                "epochs)", ("custom", "frozen", "finetune", "pretrain"), group="recipe")
    # --- data -------------------------------------------------------------------------------------------------
    data: str = _p("", "dataset: a folder, a manifest .csv or a .zip; several sources: a comma list of them or a data "
                       "collection .yaml (docs/guides/public-data.md)", group="data")
    format: str = _p("auto", "dataset layout", ("auto", "wbc", "manifest", "folders"), group="data")
    manifest: str = _p("", "manifest/labels CSV inside the data folder (default: the only CSV there)", group="data")
    manifest_query: str = _p("", "manifest format: keep only the rows matching this pandas query, e.g. "
                                 "\"label != 'eosinophil' or eosinophil_granules == 'visible'\"", group="data")
    image_column: str = _p("image", "manifest column with image paths (relative to the CSV)", group="data")
    label_column: str = _p("label", "manifest column with labels", group="data")
    mask_column: str = _p("", "manifest column with mask paths (default: 'mask' if present)", group="data")
    group_column: str = _p("", "manifest column with patient/smear IDs kept on one side of the split", group="data")
    group_labels: bool = _p(False, "the label belongs to the group (a patient's diagnosis): refuse a group whose "
                                   "cells carry two labels", group="data")
    masks_dir: str = _p("", "folders layout: parallel folder of masks, same sub-paths (relative to data, else to "
                           "the working folder)", group="data")
    image_suffix: str = _p(".bmp", "wbc layout: image file extension", group="data")
    mask_suffix: str = _p(".png", "wbc layout: mask file extension", group="data")
    class_names: str = _p("", "label code -> name, e.g. '1=neutrophil,2=lymphocyte' (wbc layout has defaults)",
                          group="data")
    positive_classes: str = _p("", "comma list: train positive-vs-rest (binary) instead of all classes",
                               group="data")
    negative_name: str = _p("", "name of the rest class in binary mode (default not_<positive>)", group="data")
    min_class_count: int = _p(5, "classes with fewer images are dropped with a warning", low=1, high=100000,
                              group="data")
    mask_codes: str = _p("", "mask code -> region, e.g. '0=background,128=cytoplasm,255=nucleus'", group="data")
    mask_stray_tolerance: float = _p(0.01, "share of a mask's pixels that may hold stray values (anti-aliasing, "
                                     "re-encoding); each takes the region around it", low=0.0, high=0.2,
                                     group="data")
    near_duplicate_distance: int = _p(8, "near copies: hash distance (in any flip/rotation or crop) that makes a "
                                         "candidate pair (-1: no near-copy search)", low=-1, high=32, group="data")
    copy_similarity: float = _p(0.76, "near copies: fine-structure correlation, after registering the pair, from "
                                      "which a candidate counts as the same image", low=0.0, high=1.0, group="data")
    # --- split ------------------------------------------------------------------------------------------------
    val_fraction: float = _p(0.15, "validation share of the images (0, in cross-validation studies and refit: no "
                                   "validation split; training runs every epoch and keeps the last)", low=0.0,
                             high=0.9, group="split")
    test_fraction: float = _p(0.15, "test share of the images (0 in a refit: every image trains the final model)",
                              low=0.0, high=0.9, group="split")
    seed: int = _p(42, "seed for the split, views and training", low=0, high=2**31 - 1, group="split")
    # --- model ------------------------------------------------------------------------------------------------
    backbone: str = _p("efficientnet_lite0", "vgg16, resnet50, efficientnet_lite0/1/2, any timm model name, or a "
                                             "pretrained backbone: models:/<name>@<alias> or runs:/<id>/backbone "
                                             "(bloodml pretrain)", group="model")
    pretrained: bool = _p(True, "start from ImageNet weights", group="model")
    weights: str = _p("", "local state_dict file for the backbone (instead of downloading)", group="model")
    image_size: int = _p(128, "network input size in pixels (square)", low=16, high=1024, group="model")
    finetune: str = _p("none", "backbone layers trained: none (frozen), last block, all", ("none", "last", "all"),
                       group="model")
    features: str = _p("final", "what the head sees: final = the backbone's own pooled features; stages = its last "
                                "three stages' maps, each average-pooled, concatenated (mid-level texture and shape)",
                       ("final", "stages"), group="model")
    freeze_epochs: int = _p(0, "head-only epochs before unfreezing (finetune=last/all)", low=0, high=10000,
                            group="model")
    backbone_lr_factor: float = _p(0.1, "backbone learning rate = lr x this factor", low=0.0, high=10.0,
                                   group="model")
    dropout: float = _p(0.2, "dropout before the classification head", low=0.0, high=0.95, group="model")
    # --- masks and preprocessing ------------------------------------------------------------------------------
    masks: str = _p("none", "what the network sees: whole image, cell only, nucleus only, background only, a square "
                            "crop around the cell, the same crop with the background zeroed",
                    ("none", "cell", "nucleus", "background", "crop", "crop_cell"), group="preprocessing")
    masks_from: str = _p("expert", "where region maps come from: expert (mask files), auto (the expert mask where "
                                   "the image has one, else the segmenter), model:<uri> (the segmenter for every "
                                   "image)", group="preprocessing")
    segmenter: str = _p("", "the segmenter for masks_from=auto: runs:/<id>/segmenter, models:/<name>@<alias> or a "
                            "run ID (bloodml segment trains one)", group="preprocessing")
    crop_margin: float = _p(0.1, "masks=crop/crop_cell: margin around the cell's box, a share of its larger side",
                            low=0.0, high=2.0, group="preprocessing")
    color_space: str = _p("rgb", "input colour space", ("rgb", "bgr", "gray", "hsv"), group="preprocessing")
    normalize: str = _p("imagenet", "normalisation: backbone's pretraining stats, training-split stats, per image",
                        ("imagenet", "dataset", "per_image"), group="preprocessing")
    stain_norm: str = _p("none", "colour normalisation for stain/instrument differences",
                         ("none", "grey_world", "reinhard", "macenko"), group="preprocessing")
    # --- augmentation (training images only) ------------------------------------------------------------------
    augment: bool = _p(True, "augment training images (image and mask together)", group="augmentation")
    rotation: float = _p(90.0, "max rotation, degrees", low=0.0, high=180.0, group="augmentation")
    shift: float = _p(0.05, "max shift, fraction of the size", low=0.0, high=0.5, group="augmentation")
    shear: float = _p(0.1, "max shear, degrees (Keras shear_range)", low=0.0, high=45.0, group="augmentation")
    zoom: float = _p(0.1, "max zoom in/out, fraction", low=0.0, high=0.9, group="augmentation")
    hflip: bool = _p(True, "random horizontal flips", group="augmentation")
    vflip: bool = _p(True, "random vertical flips", group="augmentation")
    brightness: float = _p(0.2, "brightness factor range 1 +/- this", low=0.0, high=1.0, group="augmentation")
    augment_preset: str = _p("none", "a named set of acquisition augmentations expanded into the aug_* parameters "
                                     "(explicit values win): instrument = colour, stain, blur, resampling and JPEG "
                                     "changes of another microscope, camera or lab", ("none", "instrument"),
                             group="augmentation")
    aug_gain: float = _p(0.0, "acquisition: per-channel colour gain 1 +/- this", low=0.0, high=1.0, group="augmentation")
    aug_gamma: float = _p(0.0, "acquisition: gamma exp(+/- this)", low=0.0, high=1.0, group="augmentation")
    aug_hed: float = _p(0.0, "acquisition: stain jitter in HED space, each stain x (1 +/- this)", low=0.0, high=0.5,
                        group="augmentation")
    aug_hue: float = _p(0.0, "acquisition: hue shift up to +/- this share of the colour circle", low=0.0, high=0.5,
                        group="augmentation")
    aug_saturation: float = _p(0.0, "acquisition: saturation 1 +/- this", low=0.0, high=1.0, group="augmentation")
    aug_grey: float = _p(0.0, "acquisition: mix towards grey, up to this share", low=0.0, high=1.0,
                         group="augmentation")
    aug_blur: float = _p(0.0, "acquisition: Gaussian blur, sigma up to this (pixels of the network input)", low=0.0,
                         high=10.0, group="augmentation")
    aug_resample: float = _p(0.0, "acquisition: down-then-up sampling by a factor 1 - up to this", low=0.0,
                             high=0.9, group="augmentation")
    aug_jpeg: int = _p(0, "acquisition: JPEG re-encoding at a quality from this to 95 (0: off)", low=0, high=95,
                       group="augmentation")
    aug_views: int = _p(4, "augmented views per training image (frozen backbone: features computed once per view)",
                        low=1, high=256, group="augmentation")
    # --- balancing --------------------------------------------------------------------------------------------
    balance: str = _p("oversample", "class balancing in the training split", ("none", "oversample", "weights"),
                      group="balancing")
    balance_target: int = _p(0, "oversample: images per class per epoch (0: the majority count)", low=0,
                             high=10**6, group="balancing")
    # --- optimisation and regularisation ----------------------------------------------------------------------
    epochs: int = _p(20, "maximum training epochs", low=1, high=10000, group="training")
    batch_size: int = _p(17, "images per batch", low=1, high=4096, group="training")
    lr: float = _p(1e-3, "learning rate (Adam) of the head", low=1e-7, high=1.0, group="training")
    patience: int = _p(5, "early stopping: epochs without val_loss improvement (0: off)", low=0, high=10000,
                       group="training")
    restore_best: bool = _p(True, "evaluate and log the best validation epoch's weights (false: the last epoch's)",
                            group="training")
    min_delta: float = _p(0.0, "early stopping: smallest val_loss decrease that counts", low=0.0, high=10.0,
                          group="training")
    l1: float = _p(0.0, "L1 penalty on trained weights", low=0.0, high=10.0, group="training")
    l2: float = _p(0.0, "L2 penalty on trained weights", low=0.0, high=10.0, group="training")
    label_smoothing: float = _p(0.0, "label smoothing of the cross-entropy", low=0.0, high=0.99, group="training")
    optimizer: str = _p("adam", "optimiser (adamw: decoupled weight decay)", ("adam", "adamw"), group="training")
    weight_decay: float = _p(0.0, "weight decay of the optimiser", low=0.0, high=1.0, group="training")
    schedule: str = _p("constant", "learning-rate schedule, stepped every batch", ("constant", "onecycle", "cosine"),
                       group="training")
    warmup: float = _p(0.0, "share of all steps spent warming up the learning rate (onecycle: default 0.15)",
                       low=0.0, high=0.9, group="training")
    ema: float = _p(0.0, "exponential moving average of the trained weights, decay per step (e.g. 0.99; warmed up "
                         "from 0): validation, early stopping and the logged model use the average (0: off)",
                    low=0.0, high=0.99999, group="training")
    device: str = _p("auto", "where tensors are computed: auto (CUDA, else Apple MPS, else CPU), cpu, cuda, "
                             "cuda:N, mps", group="training")
    precision: str = _p("auto", "auto (bf16 autocast on CUDA where supported, fp16 with loss scaling on other "
                                "GPUs, fp32 on CPU), fp32, bf16, fp16", ("auto", "fp32", "bf16", "fp16"),
                        group="training")
    feature_cache: str = _p("disk", "frozen backbone: features computed once per view and kept on disk and in "
                             "memory, in memory only, or recomputed every batch (off: the naive loop)",
                             ("disk", "memory", "off"), group="training")
    cache_dir: str = _p("", "feature cache folder (default $BLOODML_CACHE or ~/.cache/bloodml)", group="training")
    threads: int = _p(0, "CPU threads (0: all cores available)", low=0, high=1024, group="training")
    # --- evaluation -------------------------------------------------------------------------------------------
    threshold: float = _p(0.5, "binary tasks: positive-class probability from which a cell is called positive",
                          low=0.0, high=1.0, group="evaluation")
    tta: bool = _p(False, "test-time augmentation: average the probabilities of the image, its flips and its "
                          "transpose (evaluation and the logged model)", group="evaluation")
    adapt_bn: bool = _p(False, "scoring another dataset (evaluate, predict, cross-dataset studies): re-estimate the "
                               "batch-norm statistics on its images first (AdaBN, no labels needed); the run's own "
                               "splits are scored as trained", group="evaluation")
    test_blur: float = _p(0.0, "scoring another dataset: blur its images (Gaussian sigma, pixels of the network "
                               "input) to match a blurrier training instrument; the run's own splits are untouched",
                          low=0.0, high=10.0, group="evaluation")
    temperature_scaling: bool = _p(False, "fit a softmax temperature on the validation split (calibration)",
                                   group="evaluation")
    gradcam_samples: int = _p(12, "test images explained with Grad-CAM (0: none)", low=0, high=10000,
                              group="evaluation")
    bootstrap: int = _p(1000, "bootstrap resamples for confidence intervals", low=100, high=100000,
                        group="evaluation")
    group_aggregate: str = _p("mean", "group_column: how a group's cells make one call: the mean probability, the "
                                      "mean log-odds, the mean of the top-k cells, the share of cells called "
                                      "positive, or a gated attention pooling learnt over the cells' features "
                                      "(two classes, frozen backbone)", ("mean", "logodds", "topk", "share",
                                                                         "attention"), group="evaluation")
    group_top_k: int = _p(5, "group_aggregate=topk: how many of a group's most positive cells", low=1, high=100000,
                          group="evaluation")
    group_covariates: str = _p("", "group_column: a patients table and its numeric columns, "
                                   "<csv>:<column>,<column> (e.g. patients.csv:lymph_count,year_of_birth; the path "
                                   "from the working folder or the data folder), joined on the group column and "
                                   "standardised on the training patients", group="evaluation")
    group_inputs: str = _p("auto", "group_column: what a patient's call rests on: its cells (image), its covariates "
                                   "alone, or both (a logistic regression on the cells' evidence, out-of-fold, and "
                                   "the covariates); auto: both with group_covariates, else image",
                           ("auto", "image", "covariates", "both"), group="evaluation")
    # --- adapting to a new instrument (bloodml adapt, few_shot studies) ----------------------------------------
    adapt_strategy: str = _p("joint", "how a trained model learns a new instrument's labelled cells: joint = its "
                                      "source training images plus the new cells (weighted by target_weight), "
                                      "head = the new cells alone; both retrain the head on frozen features",
                             ("joint", "head"), group="adapt")
    target_weight: float = _p(5.0, "adapt_strategy=joint: one new-instrument cell counts as this many source "
                                   "images", low=1.0, high=1000.0, group="adapt")
    adapt_epochs: int = _p(10, "adapting: epochs over the new cells (fixed: too few cells to stop early on)",
                           low=1, high=10000, group="adapt")
    suggest_uncertainty: float = _p(0.5, "suggest: how much the model's uncertainty counts against diversity when "
                                          "ranking cells to label (1: the most uncertain first; 0: the most unlike "
                                          "each other first, k-centre on the backbone's features)", low=0.0,
                                    high=1.0, group="adapt")
    # --- tracking ---------------------------------------------------------------------------------------------
    experiment: str = _p("bloodml", "MLflow experiment name", group="tracking")
    run_name: str = _p("", "MLflow run name (default: backbone-masks)", group="tracking")

    def to_params(self) -> dict[str, str]:
        """Every parameter as the string MLflow logs."""
        return {f.name: format_value(getattr(self, f.name)) for f in fields(self)}


PARAMETERS = {f.name: f for f in fields(RunConfig)}

# The parameter groups, in the order help and the reference show them, with their headings.
GROUPS: dict[str, str] = {
    "recipe": "Recipe", "data": "Data", "split": "Split", "model": "Model", "preprocessing": "Masks and preprocessing",
    "augmentation": "Augmentation (training images only)", "balancing": "Balancing",
    "training": "Training and compute", "evaluation": "Evaluation",
    "adapt": "Adapting to a new instrument", "tracking": "Tracking",
}
_ALL = tuple(GROUPS)
_SCORING = ("threshold", "bootstrap", "group_aggregate", "group_top_k", "group_covariates", "seed")

# Which run parameters each command reads: whole groups by name, single parameters by theirs. A command takes these
# as options and no others; `mlflow run` entry points that train (main, tune, study) take every one.
COMMAND_PARAMETERS: dict[str, tuple[str, ...]] = {
    "train": _ALL,
    "refit": _ALL,
    "tune": _ALL,
    "study": _ALL,
    "evaluate": ("data", "tracking", "masks_from", "segmenter", "adapt_bn", "test_blur") + _SCORING,
    "segment": ("data", "split", "tracking", "backbone", "pretrained", "weights", "image_size", "epochs",
                "batch_size", "lr", "weight_decay", "device", "precision", "threads", "bootstrap"),
    "segment-score": ("data", "tracking", "image_size", "bootstrap", "seed"),
    "pretrain": _ALL,
    "data inspect": ("data", "split"),
    "adapt": ("data", "adapt", "tracking", "lr", "batch_size", "seed", "device", "precision", "feature_cache",
              "cache_dir", "threads"),
    "suggest": ("suggest_uncertainty", "near_duplicate_distance", "copy_similarity", "device", "precision",
                "threads"),
}


def group_of(name: str) -> str:
    return PARAMETERS[name].metadata["group"]


def command_parameters(command: str) -> list[str]:
    """The run parameters ``command`` reads, in the order of RunConfig."""
    wanted = COMMAND_PARAMETERS[command]
    return [name for name in PARAMETERS if name in wanted or group_of(name) in wanted]


def commands_reading(name: str) -> list[str]:
    """The commands that take run parameter ``name``."""
    return [command for command in COMMAND_PARAMETERS if name in command_parameters(command)]


def section(config: "RunConfig", settings: type, prefix: str = "", **given: Any):
    """A settings dataclass filled from the configuration's same-named parameters (``prefix`` + field name), so a
    step reads its group of the configuration instead of a hand copy; ``given`` fills other fields, and fields that
    are no run parameter keep their defaults."""
    values = {f.name: getattr(config, prefix + f.name) for f in fields(settings)
              if f.name not in given and prefix + f.name in PARAMETERS}
    return settings(**values, **given)


def format_value(value: Any) -> str:
    """A parameter's value as MLflow logs it and help shows it (booleans in lower case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def parameter_value(name: str, value: Any, source: str) -> Any:
    """``value`` as run parameter ``name`` takes it (type, choices, range), checked as every entry point checks it;
    a one-line error naming ``source`` otherwise. For callers that hold values before a run is configured (a search
    space's choices and bounds)."""
    if name not in PARAMETERS:
        raise _unknown(name, source)
    return _coerce(name, value, source)


def _coerce(name: str, value: Any, source: str) -> Any:
    spec = PARAMETERS[name]
    kind = spec.type if isinstance(spec.type, type) else {"str": str, "int": int, "float": float, "bool": bool}[spec.type]
    text = "" if value is None else str(value).strip()
    try:
        if kind is bool:
            if isinstance(value, bool):
                result = value
            elif text.lower() in ("true", "1", "yes", "on"):
                result = True
            elif text.lower() in ("false", "0", "no", "off"):
                result = False
            else:
                raise ValueError
        elif kind is int:
            number = float(text)
            if number != int(number):
                raise ValueError
            result = int(number)
        elif kind is float:
            result = float(text)
            if result != result or result in (float("inf"), float("-inf")):
                raise ValueError
        else:
            result = text
    except (ValueError, OverflowError):
        raise BloodmlError(f"{source}: {name}='{value}' is not a valid {kind.__name__}; e.g. "
                           f"{name}={format_value(spec.default) or '...'}.")
    meta = spec.metadata
    if name == "masks_from" and not (result in ("expert", "auto") or (result.startswith("model:") and result[6:])):
        raise BloodmlError(f"{source}: masks_from='{result}' is not allowed; use expert, auto (with segmenter=<uri>) "
                           f"or model:<uri>.")
    if meta["choices"] and result not in meta["choices"]:
        raise BloodmlError(f"{source}: {name}='{result}' is not allowed; use one of {', '.join(meta['choices'])}.")
    if meta["low"] is not None and not (meta["low"] <= result <= meta["high"]):
        raise BloodmlError(f"{source}: {name}={result} is out of range; use a value from {meta['low']} "
                           f"to {meta['high']}.")
    return result


def _unknown(name: str, source: str) -> BloodmlError:
    close = difflib.get_close_matches(name, PARAMETERS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return BloodmlError(f"{source}: unknown parameter '{name}'{hint}; `bloodml params` lists them all.")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BloodmlError(f"config {path}: file not found; pass config=experiments/<name>.yaml.")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise BloodmlError(f"config {path}:{line} is not valid YAML; fix the syntax (key: value per line).")
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise BloodmlError(f"config {path}: must be a mapping of parameter: value; fix the file.")
    return content


# Named presets: each expands into parameters underneath whatever the YAML file and the overrides set.
RECIPES: dict[str, dict[str, Any]] = {
    "custom": {},
    "frozen": {"finetune": "none", "optimizer": "adam", "lr": 1e-3, "schedule": "constant", "epochs": 20,
               "batch_size": 17, "balance": "oversample", "augment": True, "tta": False},
    # Full fine-tuning (measured on one GPU: WBC macro-F1 0.945-0.951 in 5-fold CV at 224 px).
    "finetune": {"finetune": "all", "optimizer": "adamw", "lr": 5e-4, "weight_decay": 1e-4, "schedule": "onecycle",
                 "warmup": 0.15, "backbone_lr_factor": 1.0, "epochs": 25, "batch_size": 32, "label_smoothing": 0.1,
                 "balance": "weights", "augment": True, "rotation": 180.0, "shift": 0.05, "shear": 0.0, "zoom": 0.15,
                 "hflip": True, "vflip": True, "brightness": 0.2, "patience": 0, "restore_best": False,
                 "dropout": 0.2, "tta": True},
    # A backbone fine-tuned on a large labelled pool (bloodml pretrain): every layer, a few epochs at 128 px, scale
    # and colour jitter so that it meets other instruments' cells at other sizes and stains.
    "pretrain": {"finetune": "all", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "schedule": "onecycle",
                 "warmup": 0.15, "backbone_lr_factor": 1.0, "epochs": 4, "batch_size": 48, "image_size": 128,
                 "label_smoothing": 0.1, "balance": "none", "augment": True, "rotation": 180.0, "shift": 0.05,
                 "shear": 0.0, "zoom": 0.25, "hflip": True, "vflip": True, "brightness": 0.2, "aug_gain": 0.1,
                 "aug_saturation": 0.2, "aug_hue": 0.03, "patience": 0, "restore_best": False, "dropout": 0.2,
                 "tta": False, "val_fraction": 0.1, "test_fraction": 0.15, "gradcam_samples": 0,
                 "experiment": "bloodml-pretrain"},
}


# Acquisition presets (augment_preset): what another instrument changes.
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "instrument": {"aug_gain": 0.3, "aug_gamma": 0.3, "aug_hed": 0.05, "aug_hue": 0.05, "aug_saturation": 0.3,
                   "aug_grey": 0.6, "aug_blur": 1.5, "aug_resample": 0.5, "aug_jpeg": 40},
}


def build_config(config_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the recipe's values, then the augmentation preset's, then the YAML file's values, then explicit
    overrides (empty strings and None are 'not given')."""
    values: dict[str, Any] = {}
    if config_path:
        for name, value in load_yaml(config_path).items():
            if name not in PARAMETERS:
                raise _unknown(str(name), f"config {config_path}")
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            if isinstance(value, dict):
                value = ",".join(f"{k}={v}" for k, v in value.items())
            values[name] = _coerce(name, value, f"config {config_path}")
    for name, value in (overrides or {}).items():
        if name not in PARAMETERS:
            raise _unknown(name, "parameter")
        if value is None or (isinstance(value, str) and value == ""):
            continue
        values[name] = _coerce(name, value, "parameter")
    preset = {k: _coerce(k, v, f"recipe={values.get('recipe', 'custom')}")
              for k, v in RECIPES[values.get("recipe", "custom")].items()}
    acquisition = {k: _coerce(k, v, f"augment_preset={values.get('augment_preset', 'none')}")
                   for k, v in AUGMENT_PRESETS[values.get("augment_preset", "none")].items()}
    config = RunConfig(**{**preset, **acquisition, **values})
    if config.masks_from == "auto" and not config.segmenter:
        raise BloodmlError("masks_from=auto needs a segmenter: add segmenter=<runs:/<id>/segmenter or "
                           "models:/<name>@<alias>> (bloodml segment trains one).")
    if config.val_fraction + config.test_fraction >= 0.95:
        raise BloodmlError(f"val_fraction + test_fraction = {config.val_fraction + config.test_fraction:.2f} leaves "
                           f"too little to train on; keep their sum under 0.95.")
    patient_model = config.group_aggregate == "attention" or config.group_covariates or config.group_inputs in (
        "covariates", "both")
    if patient_model and not config.group_column:
        raise BloodmlError("group_aggregate=attention, group_covariates and group_inputs are about patients: set "
                           "group_column (the manifest column with the patient IDs).")
    if config.group_inputs in ("covariates", "both") and not config.group_covariates:
        raise BloodmlError(f"group_inputs={config.group_inputs} needs group_covariates=<patients .csv>:<column>,... "
                           f"(e.g. patients.csv:lymph_count,year_of_birth).")
    if patient_model and config.finetune != "none":
        raise BloodmlError("group_aggregate=attention and group_covariates learn the patient call on frozen-backbone "
                           "features: set finetune=none (or pool a fine-tuned model's cells with mean, logodds, topk "
                           "or share).")
    return config


def patient_inputs(config: RunConfig) -> str:
    """What a patient's call rests on: group_inputs, with auto made image or both."""
    if config.group_inputs != "auto":
        return config.group_inputs
    return "both" if config.group_covariates else "image"


def replace(config: RunConfig, **changes: Any) -> RunConfig:
    """A validated copy with some values changed."""
    return build_config(None, {**config.to_params(), **{k: format_value(v) for k, v in changes.items()}})
