"""Adapt a trained model to a new instrument with a few labelled cells, as one tracked run.

:func:`run_adapt` reads as its steps: the parent model and the run that trained it -> its training images (the
source, as its split manifest logged them) -> the new instrument's labelled cells, checked -> features through
the cache (the backbone stays frozen) -> the head adapted (joint or head, ``adapt_strategy``) -> a run that names
its parent, logs the new cells as a dataset and the adapted model (served like any other), registered on request.
"""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from .cache.keys import image_keys, model_key
from .cache.store import FeatureStore
from .compute import resolve as resolve_compute
from .config import PARAMETERS, RunConfig, build_config, replace as replace_config, section
from .data.fetch import locate
from .data.images import first_few
from .data.readers import read_dataset
from .errors import BloodmlError
from .evaluation.domain_shift import ShiftProfile, input_descriptors
from .inputs.dataset import ImageSet, preload
from .models.classifier import BloodCellClassifier
from .runtime import configure, say, show_progress
from .segmentation.source import segmenter_for
from .splitting.hashing import add_hashes, near_copies
from .splitting.prepare import PreparedData, grouped_data, reader_options
from .splitting.splits import dataset_name, manifest
from .tracking.lineage import PARENT_MODEL, ParentRun, parent_run, record_lineage
from .tracking.model import load_model
from .tracking.registry import register, set_version_tag
from .tracking.runs import log_metrics, log_params, log_split_manifest, set_description, set_tags, tracked_run
from .tracking.store import configure_tracking, ui_hint
from .training.adapt import AdaptSettings, adapt_head
from .training.features import FrozenFeatures
from .training.loop import EpochRecord, TrainSettings, validation_scores
from .train import augmentation, log_trained_model


# What each epoch is checked on: the parent's validation images (how much of the source the adapted model keeps),
# or, when those are gone, the new cells themselves (how well it fits them).
WATCHED = {"source_val": "Source validation (how much of the source the model keeps)",
           "new_cells": "New cells, as trained on (the source images are not there to check)"}


@dataclass
class AdaptResult:
    run_id: str
    metrics: dict[str, float]
    model: BloodCellClassifier
    version: str = ""


@dataclass
class Parent:
    run: ParentRun
    network: BloodCellClassifier
    config: RunConfig  # the parent run's configuration, as it logged it
    profile: ShiftProfile | None  # its training images' domain-shift profile


# --- the steps ---------------------------------------------------------------------------------------------------
def parent_model(reference: str) -> Parent:
    """The model to adapt (rebuilt from its logged weights) and its training run's configuration."""
    run = parent_run(reference)
    if run.params.get("adapt_parent"):
        raise BloodmlError(f"model '{reference}' is itself adapted from {run.params['adapt_parent']}; adapt that model "
                           f"with all of the new instrument's labelled cells together.")
    network, meta = load_model(reference, network=True)
    config = build_config(None, {k: v for k, v in run.params.items() if k in PARAMETERS})
    return Parent(run, network, config, ShiftProfile.from_dict(meta.get("shift_profile")))


def source_images(parent: Parent, progress: bool) -> PreparedData:
    """The parent's training and validation images, as its split manifest logged them (matched by content), read
    with the parent's own data options; one line when some of them are no longer where it read them."""
    spec = parent.network.spec
    data = grouped_data(parent.config, progress=progress, mask_mode=spec.mask_mode)
    logged = parent.run.manifest
    split_of = dict(zip(logged["sha256"], logged["split"]))
    table = data.table.assign(split=data.table["sha256"].map(split_of).fillna(""))
    wanted = logged.loc[logged["split"].isin(["train", "val"])]
    missing = sorted(set(wanted["sha256"]) - set(table["sha256"]))
    if missing:
        lost = wanted.loc[wanted["sha256"].isin(missing), "path"]
        raise BloodmlError(f"{parent.config.data}: {len(missing)} of the {len(wanted)} images run "
                           f"{parent.run.run_id} trained on are not there any more (e.g. {lost.iloc[0]}); adapting "
                           f"joins them to the new cells: restore them, or use adapt_strategy=head (the new cells "
                           f"alone).")
    return replace(data, table=table.loc[table["split"].isin(["train", "val"])].reset_index(drop=True))


def source_if_there(parent: Parent, progress: bool) -> PreparedData | None:
    """adapt_strategy=head: the source images if they are still there (to check the new cells are no copies of
    them, and to report how much of the source the adapted model keeps); None, said in one line, if not."""
    try:
        return source_images(parent, progress)
    except BloodmlError as exc:
        say(f"note: {exc}".split("; adapting joins")[0] + "; adapting the head on the new cells alone without them")
        return None


def target_cells(config: RunConfig, parent: Parent, source: PreparedData | None, progress: bool) -> PreparedData:
    """The new instrument's labelled cells, refused with one line when a label is empty or not the model's, a
    class has fewer than 2 cells, or a cell is a copy of one of the model's training images."""
    spec, classes = parent.network.spec, parent.network.class_names
    where = locate(config.data) or config.data
    raw = read_dataset(where, reader_options(config))[0]
    empty = raw.attrs.get("unlabelled_lines", [])
    if empty:
        raise BloodmlError(f"{config.data}: {len(empty)} row(s) have an empty label (line(s) "
                           f"{', '.join(map(str, empty[:5]))}); fill in every label (bloodml suggest leaves the "
                           f"column for you to fill) or delete those rows.")
    read = replace_config(config, min_class_count=1, masks=spec.mask_mode, masks_from=parent.config.masks_from,
                          segmenter=parent.config.segmenter, positive_classes=parent.config.positive_classes,
                          negative_name=parent.config.negative_name)
    data = grouped_data(read, progress=progress, mask_mode=spec.mask_mode)
    table = data.table
    unknown = sorted(set(table["label"]) - set(classes))
    if unknown:
        raise BloodmlError(f"{config.data}: class '{unknown[0]}' is not one of the model's classes "
                           f"({', '.join(classes)}); rename it (class_names=, e.g. '{unknown[0]}={classes[0]}') or "
                           f"delete its rows.")
    counts = table["label"].value_counts()
    few = counts[counts < 2]
    if len(few):
        raise BloodmlError(f"{config.data}: class '{few.index[0]}' has {int(few.iloc[0])} labelled cell; label at "
                           f"least 2 cells of each class you give (or delete its rows).")
    if source is not None:
        copies = copies_of_training(table, source.table)
        if copies:
            new, old = copies[0]
            raise BloodmlError(f"{config.data}: {Path(new).name} is a copy of the model's training image {old} "
                               f"({len(copies)} such cell(s): {first_few([Path(c[0]).name for c in copies])}); the "
                               f"new instrument's cells must be new images: delete their rows.")
    return data


def copies_of_training(target: pd.DataFrame, source: pd.DataFrame) -> list[tuple[str, str]]:
    """(target path, source path) for each target cell that is an exact or near copy of a source image."""
    both = pd.concat([source[["path", "label", "mask_path"]].assign(side="source"),
                      target[["path", "label", "mask_path"]].assign(side="target")], ignore_index=True)
    both = add_hashes(both, progress=False)
    found = {}
    by_hash = dict(zip(both.loc[both["side"] == "source", "sha256"], both.loc[both["side"] == "source", "path"]))
    for path, digest in zip(both.loc[both["side"] == "target", "path"], both.loc[both["side"] == "target", "sha256"]):
        if digest in by_hash:
            found[path] = by_hash[digest]
    side, paths = both["side"].to_numpy(), both["path"].to_numpy()
    for i, j, _ in near_copies(both, 8):
        if side[i] != side[j]:
            new, old = (i, j) if side[i] == "target" else (j, i)
            found.setdefault(str(paths[new]), str(paths[old]))
    return sorted(found.items())


def loaded(table: pd.DataFrame, classes: list[str], spec, progress: bool, codes: str = "") -> ImageSet:
    """The images and region maps of ``table`` as the model sees them (``codes``: this dataset's mask codes)."""
    spec = replace(spec, mask_codes=codes) if codes else spec
    return preload(table, classes, spec, progress, segmenter_for(spec) if spec.segmented else None)


@dataclass
class Features:
    target: torch.Tensor  # (views, N, D)
    source: torch.Tensor | None
    val: torch.Tensor
    seconds: float


def frozen_features(parent: Parent, config: RunConfig, sets: dict[str, ImageSet], compute, progress) -> Features:
    """Every view of the source's training images and the new cells, and the source's validation images, through
    the feature cache under the parent's own key, views and seed (a warm cache computes only the new cells)."""
    started = time.perf_counter()
    network, source_config = parent.network, parent.config
    transform = augmentation(source_config)
    views = source_config.aug_views if transform is not None else 1
    store = FeatureStore(config.cache_dir or None, use_disk=config.feature_cache == "disk")
    features = FrozenFeatures(store, model_key(source_config.backbone, network.backbone, network.preprocess,
                                               network.spec.mask_mode),
                              network.backbone, network.preprocess, network.spec, source_config.seed, compute, progress)

    def every_view(images: ImageSet, name: str) -> torch.Tensor:
        keys = image_keys(images.images, images.regions)
        return torch.stack([features.of(images.images, images.regions, transform, v, keys,
                                        desc=f"features {name} view {v + 1}/{views}") for v in range(views)])
    target = every_view(sets["target"], "new cells")
    source = every_view(sets["train"], "source") if "train" in sets else None
    val = features.of(sets["val"].images, sets["val"].regions, desc="features source val") if "val" in sets else \
        target[0]
    seconds = time.perf_counter() - started
    say(f"features: {views} view(s) x {len(sets['target'])} new cells"
        + (f" + {len(sets['train'])} source images" if source is not None else "")
        + f" in {seconds:.1f}s ({store.hits} cached, {store.misses} computed)")
    return Features(target, source, val, seconds)


def adapt_params(config: RunConfig, parent: Parent) -> dict[str, str]:
    """What ran: the parent's parameters (the model's settings), the adapt command's own on top (data = the new
    cells, adapt_*, lr, batch size, seed, ...), and where the model came from."""
    own = {name: str(config.to_params()[name]) for name in PARAMETERS
           if name in ("data", "format", "manifest", "manifest_query", "image_column", "label_column", "mask_column",
                       "masks_dir", "class_names", "mask_codes", "adapt_strategy", "target_weight", "adapt_epochs",
                       "lr", "batch_size", "seed", "device", "precision", "experiment", "run_name")}
    return {**parent.config.to_params(), **own, "source_data": parent.config.data, "adapt_parent": parent.run.reference,
            "adapt_parent_run": parent.run.run_id}


def describe(parent: Parent, config: RunConfig, target: PreparedData, before: dict, after: dict, watched: str) -> str:
    counts = ", ".join(f"{n} {label}" for label, n in target.table["label"].value_counts().sort_index().items())
    return (f"Adapted from **{parent.run.reference}** (run {parent.run.run_id}, trained on {parent.config.data}) "
            f"with {len(target.table)} labelled cells of {dataset_name(config.data)} ({counts}); "
            f"adapt_strategy={config.adapt_strategy}"
            + (f", target_weight={config.target_weight:g}" if config.adapt_strategy == "joint" else "")
            + f", {config.adapt_epochs} epochs, frozen backbone.\n\n{WATCHED[watched]} macro-F1: "
            f"{before['val_macro_f1']:.3f} before, {after['val_macro_f1']:.3f} after. Score it on "
            f"the new instrument's cells it has not seen: `bloodml evaluate --unseen` leaves these out.\n")


def run_adapt(reference: str, config: RunConfig, register_name: str = "", alias: str = "") -> AdaptResult:
    """Adapt ``reference`` to the labelled cells in ``config.data``; log (and register) the adapted model."""
    started = time.perf_counter()
    progress = show_progress()
    threads = configure(config.threads, config.seed)
    compute = resolve_compute(config.device, config.precision)
    uri = configure_tracking()  # the parent is read from the store
    parent = parent_model(reference)
    classes, spec = parent.network.class_names, parent.network.spec
    joint = config.adapt_strategy == "joint"
    source = source_images(parent, progress) if joint else source_if_there(parent, progress)
    target = target_cells(config, parent, source, progress)
    say(f"adapting {reference} ({', '.join(classes)}) with {len(target.table)} labelled cells of {config.data}"
        + (f" and its {int((source.table['split'] == 'train').sum())} source training images" if joint else ""))
    sets = {"target": loaded(target.table, classes, spec, progress, config.mask_codes)}
    for split in ("train", "val") if joint else ("val",) if source is not None else ():
        sets[split] = loaded(source.table.loc[source.table["split"] == split], classes, spec, progress)
    features = frozen_features(parent, config, sets, compute, progress)
    watched = "source_val" if "val" in sets else "new_cells"
    val_labels = sets["val"].labels if "val" in sets else sets["target"].labels
    before = validation_scores(parent.network.head.eval()(features.val).detach(), val_labels)
    torch.manual_seed(config.seed)
    train_settings = section(parent.config, TrainSettings, lr=config.lr, batch_size=config.batch_size,
                             seed=config.seed)
    with tracked_run(config.experiment, config.run_name or f"adapt-{dataset_name(config.data)}",
                     tags={"bloodml.task": "adapt", "masks_used": str(spec.mask_mode != "none").lower()}) as run:
        log_params(adapt_params(config, parent))
        record_lineage(parent.run)
        set_tags({"classes": ",".join(classes), "threads": str(threads), "device": str(compute.device)})
        log_split_manifest(manifest(target.table.assign(split="target"), str(target.root)),
                           dataset_name(config.data), str(target.root))

        def log_epoch(record: EpochRecord) -> None:
            log_metrics({f"{watched}_loss": record.val_loss, f"{watched}_macro_f1": record.val_macro_f1,
                         "train_loss": record.train_loss}, step=record.epoch)
            say(f"epoch {record.epoch}/{config.adapt_epochs}  train_loss={record.train_loss:.4f}  "
                f"{watched} macro-F1={record.val_macro_f1:.3f}  ({record.seconds:.1f}s)")
        head, _ = adapt_head(parent.network.head, section(config, AdaptSettings), train_settings,
                             features.target, sets["target"].labels, features.source,
                             sets["train"].labels if "train" in sets else None, features.val, val_labels,
                             len(classes), log_epoch, compute)
        model = BloodCellClassifier(spec, parent.network.backbone, head.cpu(), classes, tta=parent.network.tta).eval()
        after = validation_scores(head.cpu()(features.val.cpu()).detach(), val_labels)
        profile, shift = shift_of(spec, sets, parent)
        metrics = {f"{watched}_macro_f1_before": before["val_macro_f1"], f"{watched}_macro_f1": after["val_macro_f1"],
                   "n_target": float(len(target.table)), "n_source": float(len(sets["train"])) if joint else 0.0,
                   "feature_seconds": features.seconds, **shift}
        log_trained_model(model, parent.config, sets["target"], profile, target.table)
        metrics["adapt_seconds"] = time.perf_counter() - started
        log_metrics(metrics)
        set_description(describe(parent, config, target, before, after, watched))
        version = ""
        if register_name:
            version = register(run.info.run_id, register_name, alias)
            set_version_tag(register_name, version, PARENT_MODEL, reference)
            say(f"registered models:/{register_name}@{alias} (version {version})" if alias else
                f"registered {register_name} version {version}")
        say(f"adapted in {metrics['adapt_seconds']:.0f}s: {watched} macro-F1 {before['val_macro_f1']:.3f} -> "
            f"{after['val_macro_f1']:.3f}; run {run.info.run_id} (parent {reference}); score it on cells it has not "
            f"seen: bloodml evaluate -m runs:/{run.info.run_id}/model --data <the new instrument's cells> --unseen")
        say(f"see it: {ui_hint(uri)}")
    return AdaptResult(run.info.run_id, metrics, model, version)


def shift_of(spec, sets: dict[str, ImageSet], parent: Parent) -> tuple[ShiftProfile, dict[str, float]]:
    """The adapted model's domain-shift profile (its source images and the new cells: both are now its own), and
    how far the new cells lay from the parent's profile (``target_shift_*``)."""
    target = input_descriptors(spec, sets["target"].images, sets["target"].regions)
    parts = [target] + ([input_descriptors(spec, sets["train"].images, sets["train"].regions)] if "train" in sets
                        else [])
    before = {f"target_{k}": v for k, v in parent.profile.report(target).items()} if parent.profile else {}
    return ShiftProfile.fit(np.concatenate(parts)), before

