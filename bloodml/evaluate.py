"""Score a trained model on another dataset (another instrument, another lab) and log it as its own MLflow run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import PARAMETERS, RunConfig, format_value
from .data.labels import parse_class_names
from .splitting.prepare import read_labelled, require_masks
from .errors import BloodmlError
from .evaluation.calibration import expected_calibration_error
from .evaluation.calls import CallRule
from .evaluation.groups import group_line
from .evaluation.metrics import majority_rate
from .evaluation.scoring import confusion_frame, predictions_frame, recall_per_class, score
from .predict import adapted_model, loaded_model, model_probabilities, domain_shift_check, patient_calls
from .segmentation.source import with_masks_from
from .runtime import say
from .data.checksums import file_sha256
from .tracking.lineage import trained_on
from .tracking.registry import model_uri, source_run
from .tracking.runs import get_run, log_metrics, log_params, log_table, tracked_run
from .tracking.store import configure_tracking


def relabelled(table: pd.DataFrame, label_map: str, classes: list[str], data: str) -> pd.DataFrame:
    """The dataset's labels in the model's class names (``label_map``: 'theirs=ours,...')."""
    mapping = parse_class_names(label_map, "--label-map", "LY=lymphocyte,NE=neutrophil") if label_map else {}
    foreign = sorted(set(mapping.values()) - set(classes))
    if foreign:
        raise BloodmlError(f"--label-map maps to {', '.join(foreign)}, not among the model's classes "
                           f"({', '.join(classes)}); write it as 'theirs=ours' with ours one of those.")
    table = table.assign(label=table["label"].map(lambda v: mapping.get(v, v)))
    unknown = sorted(set(table["label"]) - set(classes))
    if unknown:
        raise BloodmlError(f"labels {', '.join(unknown)} of {data} are not among the model's classes "
                           f"({', '.join(classes)}); map them with --label-map 'theirs=ours,...'.")
    return table


# How the model's training run read its data and called its groups: a new dataset of the same kind is read the
# same way unless the command line says otherwise (evaluate -m <it> --data <other cells.csv> --group-column patient).
READ_AS_TRAINED = ("image_column", "label_column", "mask_column", "positive_classes", "negative_name",
                   "group_column", "group_labels", "group_aggregate", "group_top_k", "threshold", "group_covariates")


def as_trained(reference: str, given: dict) -> dict:
    """``given`` (the command line's run parameters) completed by the training run's READ_AS_TRAINED parameters,
    said in one line; a patients table is looked for under its file name beside the new data."""
    try:
        run_id = source_run(model_uri(reference))
        logged = get_run(run_id).data.params if run_id else {}
    except Exception:  # noqa: BLE001 - a model folder without a run: nothing to inherit
        logged = {}
    inherited = {k: logged[k] for k in READ_AS_TRAINED if k not in given and logged.get(k, "") not in ("", None)
                 and logged[k] != format_value(PARAMETERS[k].default)}
    if "group_covariates" in inherited:
        path, _, columns = inherited["group_covariates"].rpartition(":")
        inherited["group_covariates"] = f"{Path(path).name}:{columns}"  # the new patients' table, same name
    if inherited:
        say("read as the model's training data was: " + ", ".join(f"{k}={v}" for k, v in inherited.items())
            + " (give them to change)")
    return {**inherited, **given}


def evaluate_model(reference: str, config: RunConfig, label_map: str = "", batch: int = 32,
                   unseen: bool = False) -> dict[str, float]:
    configure_tracking()
    model, classes, spec, profile = loaded_model(reference, network=config.adapt_bn)
    spec = with_masks_from(spec, config.masks_from, config.segmenter)
    table, fmt, root, notes = read_labelled(config)
    table = relabelled(table, label_map, classes, config.data)
    table = masked_rows(table, spec)
    table = without_training_images(table, reference, unseen, config.data)
    require_masks(table, spec.mask_mode, spec.masks_from)
    paths, mask_paths = list(table["path"]), list(table["mask_path"])
    if config.adapt_bn:
        model = adapted_model(model, spec, paths, mask_paths, batch, config.mask_codes, config.test_blur)
    points: list = []
    probabilities = model_probabilities(model, spec, paths, mask_paths, batch, config.mask_codes, domain_points=points,
                                        blur=config.test_blur)
    truth = np.array([classes.index(label) for label in table["label"]])
    groups = table["group"].to_numpy() if config.group_column else None
    pooled = (patient_calls(reference, paths, mask_paths, groups, config.group_covariates, config.group_column,
                            root, batch) if groups is not None else None)  # a learnt pooling, covariates
    scored = score(truth, probabilities, classes, "eval_", CallRule.of_run(config, classes), config.bootstrap,
                   config.seed, resample=groups, group_ids=groups, pooled=pooled)  # with groups, one call per patient
    metrics, calls = scored.metrics, scored.groups
    metrics["eval_majority_rate"] = majority_rate(truth)
    metrics["eval_ece"] = expected_calibration_error(truth, probabilities)
    metrics["eval_images"] = float(len(table))
    metrics.update({f"eval_{k}": v for k, v in domain_shift_check(profile, points).items()})
    recall = recall_per_class(scored.confusion, classes)
    metrics.update({f"eval_recall_{name}": v for name, v in recall.items()})
    in_domain = source_metrics(reference)
    with tracked_run(config.experiment, config.run_name or f"evaluate-{Path(str(config.data)).name}",
                     tags={"bloodml.task": "evaluate", "model": reference, "masks_used": str(spec.masked).lower()}):
        log_params({"model": reference, "data": config.data, "label_map": label_map or "(none)", "format": fmt,
                    "adapt_bn": config.adapt_bn, "test_blur": config.test_blur, "unseen": str(unseen).lower()})
        log_metrics(metrics)
        log_table(predictions_frame(paths, truth, probabilities, classes, scored.predicted),
                  "evaluation/predictions.csv")
        if calls is not None:
            log_table(calls, "evaluation/groups.csv")
        log_table(confusion_frame(scored.confusion, classes).reset_index(names="class"),
                  "evaluation/confusion_matrix.csv")
    say(f"{reference} on {config.data}: accuracy {metrics['eval_accuracy']:.3f} "
        f"({metrics['eval_accuracy_ci_low']:.3f}-{metrics['eval_accuracy_ci_high']:.3f}), macro-F1 "
        f"{metrics['eval_macro_f1']:.3f}, {len(table)} images (majority rate {metrics['eval_majority_rate']:.3f})")
    if "test_macro_f1" in in_domain:
        say(f"in-domain (the model's own test split): accuracy {in_domain.get('test_accuracy', float('nan')):.3f}, "
            f"macro-F1 {in_domain['test_macro_f1']:.3f}; here: accuracy {metrics['eval_accuracy']:.3f}, macro-F1 "
            f"{metrics['eval_macro_f1']:.3f}")
    if calls is not None:
        say(group_line(metrics, "eval_", config.group_column, "the model's patient call" if pooled else
                       config.group_aggregate))
    say("recall per class: " + ", ".join(f"{name} {v:.2f}" for name, v in recall.items()))
    say("confusion matrix (rows true, columns predicted: " + ", ".join(classes) + "): "
        + " | ".join(" ".join(str(int(c)) for c in row) for row in scored.confusion))
    return metrics


def source_metrics(reference: str) -> dict[str, float]:
    """The metrics of the run that trained the model (its in-domain test scores); empty when unknown."""
    try:
        run_id = source_run(model_uri(reference))
        return dict(get_run(run_id).data.metrics) if run_id else {}
    except Exception:  # noqa: BLE001 - a model folder without a run: nothing to compare with
        return {}


def without_training_images(table: pd.DataFrame, reference: str, unseen: bool, data: str) -> pd.DataFrame:
    """The images the model was trained on (by content, from its run's split manifest; an adapted model's new
    cells too) flatter it: said in one line, and left out with ``unseen``."""
    seen = trained_on(reference)
    if not seen:
        return table
    known = table["path"].map(file_sha256).isin(seen)
    if not known.any():
        return table
    if not unseen:
        say(f"note: {int(known.sum())} of these {len(table)} images were in the model's training data (its split "
            f"manifest), so their scores flatter it; pass --unseen to leave them out")
        return table
    if known.all():
        raise BloodmlError(f"{data}: all {len(table)} images were in the training data of {reference}; evaluate it "
                           f"on images it has not seen.")
    say(f"left out {int(known.sum())} of {len(table)} images the model was trained on (--unseen)")
    return table.loc[~known].reset_index(drop=True)


def masked_rows(table: pd.DataFrame, spec) -> pd.DataFrame:
    """A masked model without a segmenter scores the images that have a mask; a few without one are left out
    with a note (all of them missing is refused by require_masks)."""
    if not spec.masked or spec.masks_from != "expert":
        return table
    has = table["mask_path"].map(lambda m: isinstance(m, str) and bool(m))
    if has.any() and (~has).any():
        say(f"note: {int((~has).sum())} of {len(table)} images have no mask (first: {table.loc[~has, 'path'].iloc[0]}) "
            f"and are left out: the model was trained with masks={spec.mask_mode}; add their masks or pass "
            f"--masks_from auto --segmenter <uri> to score them too")
        return table.loc[has].reset_index(drop=True)
    return table
