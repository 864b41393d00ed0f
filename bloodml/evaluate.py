"""Score a trained model on another dataset (another instrument, another lab) and log it as its own MLflow run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import RunConfig
from .data.labels import parse_class_names
from .data.prepare import read_labelled, require_masks
from .errors import BloodmlError
from .evaluation.calibration import expected_calibration_error
from .evaluation.metrics import classification_metrics, majority_rate
from .predict import loaded_model, model_probabilities
from .segmentation.source import with_masks_from
from .runtime import say
from .tracking.runs import log_metrics, log_params, log_table, training_run
from .tracking.store import configure_tracking
from .train import positive_index


def relabelled(table: pd.DataFrame, label_map: str, classes: list[str], data: str) -> pd.DataFrame:
    """The dataset's labels in the model's class names (``label_map``: 'theirs=ours,...')."""
    mapping = parse_class_names(label_map) if label_map else {}
    table = table.assign(label=table["label"].map(lambda v: mapping.get(v, v)))
    unknown = sorted(set(table["label"]) - set(classes))
    if unknown:
        raise BloodmlError(f"labels {', '.join(unknown)} of {data} are not among the model's classes "
                           f"({', '.join(classes)}); map them with --label-map 'theirs=ours,...'.")
    return table


def evaluate_model(reference: str, config: RunConfig, label_map: str = "", batch: int = 32) -> dict[str, float]:
    configure_tracking()
    model, classes, spec = loaded_model(reference)
    spec = with_masks_from(spec, config.masks_from, config.segmenter)
    table, fmt, root, notes = read_labelled(config)
    table = relabelled(table, label_map, classes, config.data)
    require_masks(table, spec.mask_mode, spec.masks_from)
    probabilities = model_probabilities(model, spec, list(table["path"]), list(table["mask_path"]), batch,
                                        config.mask_codes)
    truth = np.array([classes.index(label) for label in table["label"]])
    groups = table["group"].to_numpy() if config.group_column else None
    metrics = classification_metrics(truth, probabilities, "eval_", classes, positive_index(config, classes),
                                     config.threshold, config.bootstrap, config.seed, groups)
    metrics["eval_majority_rate"] = majority_rate(truth)
    metrics["eval_ece"] = expected_calibration_error(truth, probabilities)
    metrics["eval_images"] = float(len(table))
    with training_run(config.experiment, config.run_name or f"evaluate-{Path(str(config.data)).name}",
                      tags={"bloodml.task": "evaluate", "model": reference, "masks_used": str(spec.masked).lower()}):
        log_params({"model": reference, "data": config.data, "label_map": label_map or "(none)", "format": fmt})
        log_metrics(metrics)
        predictions = pd.DataFrame({"file": table["path"], "true_label": table["label"],
                                    "predicted_label": [classes[i] for i in probabilities.argmax(1)]})
        for i, name in enumerate(classes):
            predictions[f"p_{name}"] = probabilities[:, i]
        log_table(predictions, "evaluation/predictions.csv")
    say(f"{reference} on {config.data}: accuracy {metrics['eval_accuracy']:.3f} "
        f"({metrics['eval_accuracy_ci_low']:.3f}-{metrics['eval_accuracy_ci_high']:.3f}), macro-F1 "
        f"{metrics['eval_macro_f1']:.3f}, {len(table)} images (majority rate {metrics['eval_majority_rate']:.3f})")
    return metrics
