"""Classify new images with a logged or registered model, preprocessing them exactly as in training.

The model carries its input specification (size, mask mode and codes, how a mask is found, preprocessing) and
its class names, so the user re-types nothing.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .inputs.acquisition import sharpness_blur
from .data.archives import is_zip, unzipped
from .inputs.dataset import cell_free as marks_no_cell, load_batch
from .data.images import IMAGE_EXTENSIONS, first_few, is_image_file, unreadable_files, unreadable_summary
from .inputs.input_spec import InputSpec
from .data.masks import find_mask
from .data.readers import class_folders, find_column, mirrored_masks_folder, native_path, read_csv
from .errors import BloodmlError
from .evaluation.calls import CallRule
from .evaluation.groups import AGGREGATES, group_table
from .evaluation.domain_shift import ShiftProfile, descriptors, warning
from .models.adaptation import adapt_batchnorm
from .runtime import say
from .segmentation.source import segmenter_for, with_masks_from
from .serving.frames import probability_table
from .tracking.lineage import patient_model_folder
from .tracking.model import load_model
from .patients.covariates import parse_covariates, read_covariates
from .patients.model import PatientModel, Patients
from .compute import CPU, Compute


def model_facts(meta: dict) -> tuple[list[str], InputSpec, ShiftProfile | None]:
    """Class names, input spec and domain-shift profile (None for older models) from a model's metadata."""
    return list(meta["class_names"]), InputSpec.from_metadata(meta), ShiftProfile.from_dict(meta.get("shift_profile"))


def loaded_model(reference: str, network: bool = False):
    """(pyfunc model, class names, input spec, its domain-shift profile or None) of a bloodml model; with
    ``network``, the torch module rebuilt from its logged weights instead of the pyfunc model."""
    model, meta = load_model(reference, network)
    return (model, *model_facts(meta))


def domain_shift_check(profile: ShiftProfile | None, points: list) -> dict[str, float]:
    """The domain-shift report of these images against the model's training images (empty for models logged
    before the check existed), with its warning line printed when most are far."""
    if profile is None or not points:
        return {}
    points = np.concatenate(points)
    report = profile.report(points)
    line = warning(report, len(points))
    if line:
        say(line)
    return report


def collect_images(inputs: list[str | Path], pattern: str = "*", exclude: Path | None = None) -> list[Path]:
    """Image files given directly, or found at any depth in given folders (names matching ``pattern``; nothing
    under ``exclude``, the masks folder when it sits inside an input folder)."""
    skip = exclude.resolve() if exclude is not None else None
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            # a masks folder *inside* the input folder is skipped (masks beside the images: use --pattern)
            inside = skip is not None and skip != item.resolve() and skip.is_relative_to(item.resolve())
            files += sorted(p for p in item.rglob(pattern) if p.is_file() and is_image_file(p)
                            and not (inside and p.resolve().is_relative_to(skip)))
        elif item.is_file():
            files.append(item)
        else:
            raise BloodmlError(f"{item}: no such file or folder; pass image files or folders to predict.")
    if not files:
        matching = f" matching --pattern '{pattern}'" if pattern != "*" else ""
        raise BloodmlError(f"no images{matching} found in {', '.join(map(str, inputs))} ("
                           f"{', '.join(sorted(IMAGE_EXTENSIONS))}); pass image files or folders"
                           f"{', or another --pattern' if matching else ''}.")
    return files


class InMemoryModel:
    """A classifier in memory behind the logged model's interface: float32 network input -> probabilities."""

    def __init__(self, model):
        self.model = model.cpu().float().eval()

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()


def network_inputs(spec: InputSpec, paths: list[str], mask_paths: list[str | None], batch: int = 32,
                   mask_codes: str = "", blur: float = 0.0, cell_free: list | None = None):
    """Batches of network input: each image read and masked as ``spec`` says, exactly as in training (``mask_codes``
    overrides the codes stored with the model: another lab's masks), then blurred by ``blur`` (test_blur).
    ``cell_free``, a list, receives the paths of the masks that mark no cell (a masked spec shows nothing there)."""
    if mask_codes:
        spec = replace(spec, mask_codes=mask_codes)
    segmenter = segmenter_for(spec)
    for start in range(0, len(paths), batch):
        masks = mask_paths[start:start + batch]
        images, regions = load_batch(paths[start:start + batch], masks, spec, segmenter)
        if cell_free is not None and spec.masked:
            cell_free.extend(mask for mask, blank in zip(masks, marks_no_cell(regions).tolist()) if blank and mask)
        yield sharpness_blur(spec.network_input(images, regions), blur)


@torch.no_grad()
def cell_outputs(model, paths: list[str], mask_paths: list[str | None], batch: int = 32,
                 compute: Compute = CPU) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, C), pooled backbone features (N, D)) of the cells, read as the model was trained."""
    model = model.eval().to(compute.device)
    probabilities, features = [], []
    for x in network_inputs(model.spec, paths, mask_paths, batch):
        x = compute.put(x)
        probabilities.append(model(x).float().cpu().numpy())
        features.append(model.backbone(model.preprocess(x)).float().cpu().numpy())
    return np.concatenate(probabilities), np.concatenate(features)


def patient_calls(reference: str, paths: list[str], mask_paths: list[str | None], groups, group_covariates: str = "",
                  group_column: str = "", data_root=None, batch: int = 32) -> dict | None:
    """Each patient's class probabilities from the patient model the run logged (a learnt pooling, covariates):
    its cells' features (and their covariates: ``group_covariates``, the new patients' table); None when the run
    pooled its cells by a fixed rule."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = patient_model_folder(reference, tmp)
        if folder is None:
            return None
        patient_model = PatientModel.load(Path(folder))
    covariates_of = None
    if patient_model.covariates:
        spec = parse_covariates(group_covariates, data_root)
        wanted = ",".join(patient_model.covariates)
        if spec is None:
            raise BloodmlError(f"{reference} calls a patient from its cells and its covariates ({wanted}): pass the "
                               f"new patients' table, --group_covariates <patients .csv>:{wanted}.")
        if spec.columns != patient_model.covariates:
            raise BloodmlError(f"--group_covariates {group_covariates}: the model was trained on {wanted}, in that "
                               f"order; pass <patients .csv>:{wanted}.")
        covariates_of = lambda ids: read_covariates(spec, group_column, ids).to_numpy()  # noqa: E731
    network, _ = load_model(reference, network=True)
    probabilities, features = cell_outputs(network, paths, mask_paths, batch)
    patients = Patients.of(groups, probabilities, torch.as_tensor(features), covariates_of=covariates_of,
                           positive_class=patient_model.positive)
    say(patient_model.describe())
    return dict(zip(patients.groups, patient_model.probabilities(patients)))


def model_probabilities(model, spec: InputSpec, paths: list[str], mask_paths: list[str | None], batch: int = 32,
                        mask_codes: str = "", domain_points: list | None = None, blur: float = 0.0,
                        cell_free: list | None = None) -> np.ndarray:
    """Class probabilities (N, C) of a loaded bloodml model on these images (see :func:`network_inputs`);
    ``domain_points``, a list, receives the images' domain-shift descriptors, ``cell_free`` the masks that mark no
    cell."""
    parts = []
    for x in network_inputs(spec, paths, mask_paths, batch, mask_codes, blur, cell_free):
        if domain_points is not None:
            domain_points.append(descriptors(x))
        parts.append(np.asarray(model.predict(x.numpy().astype(np.float32))))
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def adapted_model(network, spec: InputSpec, paths: list[str], mask_paths: list[str | None], batch: int = 32,
                  mask_codes: str = "", blur: float = 0.0) -> InMemoryModel:
    """``network`` (a torch classifier) with its batch-norm statistics re-estimated on these images (AdaBN),
    behind the logged model's interface; one line says what changed."""
    if len(paths) < 2:
        raise BloodmlError(f"adapt_bn needs at least 2 images to estimate batch-norm statistics from ({len(paths)} "
                           f"given); pass more images or leave adapt_bn off.")
    inputs = network_inputs(spec, paths, mask_paths, batch, mask_codes, blur)
    adapted, layers = adapt_batchnorm(network.cpu().float().eval(), inputs)
    say(f"adapt_bn: batch-norm statistics of {layers} layers re-estimated on {len(paths)} images" if layers else
        "adapt_bn: the model has no batch-norm layers; nothing to adapt")
    return InMemoryModel(adapted)


def masked_inputs(files: list[Path], groups: list | None, spec: InputSpec,
                  masks_dir: Path | None) -> tuple[list[Path], list | None, list[str | None]]:
    """The files to predict, their groups and each one's mask under ``masks_dir`` (the rule training used). A
    masked model needs a mask for every image unless its segmenter draws the missing ones: images without one are
    left out and named in one line (as ``evaluate`` does); none with a mask is an error."""
    if not spec.masked or spec.masks_from == "model":
        return files, groups, [None] * len(files)
    found = [find_mask(path, masks_dir) if masks_dir is not None else None for path in files]
    if spec.segmented or all(mask is not None for mask in found):
        return files, groups, [str(mask) if mask is not None else None for mask in found]
    lacking = [str(path) for path, mask in zip(files, found) if mask is None]
    how = (f"pass --masks-dir with the masks at the images' sub-paths ({Path(lacking[0]).stem}.*), or "
           f"--masks-from auto --segmenter <uri> to let a segmenter draw them")
    if len(lacking) == len(files):
        where = f" (none of the {len(files)} images has one in {masks_dir})" if masks_dir is not None else ""
        raise BloodmlError(f"{lacking[0]}: the model was trained with masks={spec.mask_mode} and needs each image's "
                           f"mask{where}; {how}.")
    keep = [i for i, mask in enumerate(found) if mask is not None]
    say(f"left out {len(lacking)} of {len(files)} image(s) without a mask, not in the predictions (the model was "
        f"trained with masks={spec.mask_mode}): {first_few(lacking)}; "
        f"to predict them too, {how}")
    return ([files[i] for i in keep], [groups[i] for i in keep] if groups is not None else None,
            [str(found[i]) for i in keep])


def listed_images(manifest: Path, image_column: str, group_column: str) -> tuple[list[Path], list]:
    """The images a CSV lists (paths relative to it) and, with ``group_column``, each one's group."""
    table = read_csv(manifest)  # as training reads a manifest: BOM, delimiter, whitespace
    image_column, group_column = find_column(table.columns, image_column), find_column(table.columns, group_column)
    for column in (image_column, group_column):
        if column and column not in table.columns:
            raise BloodmlError(f"{manifest}: no column '{column}' (columns: {', '.join(table.columns)}); pass "
                               f"--image-column/--group-column with the right names.")
    files = [manifest.parent / native_path(manifest.parent, value) for value in table[image_column]]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise BloodmlError(f"{missing[0]}: listed in {manifest} but not found ({len(missing)} of {len(files)} missing); "
                           f"fix the paths (relative to the CSV).")
    return files, list(table[group_column]) if group_column else [None] * len(files)


def collect_inputs(inputs: list[str | Path], pattern: str, exclude: Path | None, image_column: str = "image",
                   group_column: str = "") -> tuple[list[Path], list | None]:
    """Image files from files, folders and CSV lists; with ``group_column``, each image's group: the CSV's column,
    or the image's folder (``group_column=folder``). Returns (files, groups or None)."""
    files, groups = [], []
    for item in map(Path, inputs):
        if item.is_file() and item.suffix.lower() == ".csv":
            listed, listed_groups = listed_images(item, image_column, "" if group_column == "folder" else group_column)
            files += listed
            groups += [f.parent.name for f in listed] if group_column == "folder" else listed_groups
            continue
        found = collect_images([item], pattern, exclude)
        if group_column and group_column != "folder":
            raise BloodmlError(f"{item}: --group-column {group_column} needs a CSV listing the images with that "
                               f"column; for images in one folder per patient pass --group-column folder.")
        files += found
        groups += [f.parent.name for f in found]
    return files, groups if group_column else None


def predict_images(reference: str, inputs: list[str | Path], masks_dir: str | Path | None = None,
                   batch: int = 32, pattern: str = "*", masks_from: str = "", segmenter: str = "",
                   image_column: str = "image", group_column: str = "",
                   group_aggregate: str = "", adapt_bn: bool = False,
                   test_blur: float = 0.0, group_covariates: str = "") -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """One row per image: file, predicted_label, confidence and p_<class> for every class. A model trained with a
    segmenter uses it for images without a mask; ``masks_from``/``segmenter`` choose another source. A zip among
    ``inputs`` is read as the folder it holds (unpacked once into the cache).

    With ``group_column`` (a column of the CSV listing the images, or ``folder``), each image's group too, and one
    row per group: its cells pooled by ``group_aggregate`` (default: as the model was trained) into one call.
    ``adapt_bn`` re-estimates the model's batch-norm statistics on these images first; ``test_blur`` blurs them
    (Gaussian sigma in pixels of the network input). Returns (cells, groups or None)."""
    inputs = [unzipped(Path(i)) if is_zip(i) else i for i in inputs]
    model, meta = load_model(reference, network=adapt_bn)
    classes, spec, profile = model_facts(meta)
    spec = with_masks_from(spec, masks_from, segmenter)
    masks = Path(masks_dir) if masks_dir else beside_the_classes(inputs)
    if masks is not None and not masks.is_dir():
        raise BloodmlError(f"--masks-dir {masks}: not a folder; pass the folder holding the masks.")
    files, groups = collect_inputs(inputs, pattern, masks, image_column, group_column)
    if not files:
        raise BloodmlError(f"no images found in {', '.join(map(str, inputs))}; pass image files, folders or a CSV.")
    files, groups = readable_inputs(files, groups)
    files, groups, mask_paths = masked_inputs(files, groups, spec, masks)
    paths = [str(f) for f in files]
    if adapt_bn:
        model = adapted_model(model, spec, paths, mask_paths, batch, blur=test_blur)
    points: list = []
    cell_free: list = []
    probabilities = model_probabilities(model, spec, paths, mask_paths, batch, domain_points=points, blur=test_blur,
                                        cell_free=cell_free)
    if cell_free:
        say(f"note: {len(cell_free)} of {len(paths)} masks mark no cell, so the model (masks={spec.mask_mode}) saw "
            f"nothing of those cells and their predictions mean little: {first_few(cell_free)}; fix the masks")
    domain_shift_check(profile, points)
    rule = calling_rule(meta, group_aggregate)
    table = probability_table(probabilities, classes, label="predicted_label", rule=rule)
    table.insert(0, "file", [str(path) for path in files])
    if groups is None:
        return table, None
    table.insert(1, "group", groups)
    pooled = None if group_aggregate else patient_calls(reference, paths, mask_paths, groups, group_covariates,
                                                        group_column, batch=batch)
    return table, group_table(groups, None, probabilities, classes, rule, pooled).assign(
        group_aggregate=rule.aggregate if pooled is None else "patient model")


def beside_the_classes(inputs: list[str | Path]) -> Path | None:
    """A masks folder laid out beside the class folders of the one input folder (as training takes it without
    masks_dir), said in one line; None otherwise."""
    if len(inputs) != 1 or not Path(inputs[0]).is_dir():
        return None
    mirror = mirrored_masks_folder(class_folders(Path(inputs[0])))
    if mirror is not None:
        say(f"took {mirror} as --masks-dir: its sub-folders mirror the class folders (its files are not predicted); "
            f"pass --masks-dir to choose another folder")
    return mirror


def readable_inputs(files: list[Path], groups: list | None) -> tuple[list[Path], list | None]:
    """The files that can be read, with their groups; one line names those left out (the others are still
    predicted: one broken file does not cost a folder's predictions). None readable: an error."""
    reasons = unreadable_files(files)
    if not reasons:
        return files, groups
    messages = list(reasons.values())
    if len(reasons) == len(files):
        raise BloodmlError(messages[0] if len(messages) == 1 else f"none of the {len(files)} images can be read, "
                           f"e.g. {messages[0]}")
    keep = [i for i, f in enumerate(files) if str(f) not in reasons]
    say(f"left out {len(reasons)} unreadable image(s), not in the predictions: {unreadable_summary(messages)}")
    return [files[i] for i in keep], [groups[i] for i in keep] if groups is not None else None


def calling_rule(meta: dict, group_aggregate: str = "") -> CallRule:
    """How the model's training run called a cell and a group (threshold, positive class, pooling; from its
    metadata); ``group_aggregate`` overrides the pooling."""
    if group_aggregate and group_aggregate not in AGGREGATES:  # attention is learnt: the run's patient model
        raise BloodmlError(f"--group-aggregate {group_aggregate}: unknown; use one of {', '.join(AGGREGATES)}.")
    return CallRule.of_model(meta, group_aggregate)
