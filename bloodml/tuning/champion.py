"""Promotion in the Model Registry: the best trial becomes the champion only if it beats the current one,
judged on the validation images the two share (or, failing that, on their recorded objective values)."""

from __future__ import annotations

import tempfile

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from ..evaluation.metrics import balanced_accuracy_from, confusion_counts, macro_f1_from
from ..predict import load_model, model_probabilities

SCORES = {"val_macro_f1": macro_f1_from, "val_balanced_accuracy": balanced_accuracy_from,
          "val_accuracy": lambda cm: float(np.trace(cm) / max(cm.sum(), 1))}


def _val_hashes(run_id: str) -> set[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.MlflowClient().download_artifacts(run_id, "split_manifest.csv", tmp)
        table = pd.read_csv(path, dtype=str)
    return set(table.loc[table["split"] == "val", "sha256"])


def score_model(model_uri: str, rows: pd.DataFrame, objective: str) -> float | None:
    """The objective of a logged model on given images (rows: path, label, mask_path)."""
    model, meta = load_model(model_uri)
    classes = meta["class_names"]
    if set(rows["label"]) - set(classes):
        return None
    probabilities = model_probabilities(model, meta, list(rows["path"]), list(rows["mask_path"]))
    truth = np.array([classes.index(label) for label in rows["label"]])
    if objective == "val_loss":
        return float(-np.log(np.clip(probabilities[np.arange(len(truth)), truth], 1e-12, 1)).mean())
    return SCORES[objective](confusion_counts(truth, probabilities.argmax(1), len(classes)))


def promote(name: str, run_id: str, objective: str, value: float, val_rows: pd.DataFrame,
            alias: str = "champion") -> tuple[str, bool, str]:
    """Register ``run_id``'s model as a new version of ``name``; move ``alias`` to it only if it is better.

    Returns (version, promoted, reason)."""
    client = mlflow.MlflowClient()
    maximise = objective != "val_loss"
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    if current is not None and current.run_id == run_id:
        return current.version, True, "already the champion"
    version = mlflow.register_model(f"runs:/{run_id}/model", name).version
    client.set_model_version_tag(name, version, "objective", objective)
    client.set_model_version_tag(name, version, "objective_value", repr(float(value)))
    if current is None:
        client.set_registered_model_alias(name, alias, version)
        return version, True, "first champion"
    shared = val_rows.loc[val_rows["sha256"].isin(_val_hashes(current.run_id))]
    if len(shared) >= 5:
        new = score_model(f"runs:/{run_id}/model", shared, objective)
        old = score_model(f"models:/{name}/{current.version}", shared, objective)
        basis = f"{len(shared)} shared validation images"
    else:
        new, old = value, float(current.tags.get("objective_value", "nan"))
        basis = "recorded objective values (fewer than 5 shared validation images)"
    if new is None or old is None:
        return version, False, "classes differ from the champion's; alias left in place"
    better = new > old + 1e-12 if maximise else new < old - 1e-12  # a tie keeps the champion
    if better:
        client.set_registered_model_alias(name, alias, version)
    reason = f"{objective} {new:.4f} vs champion v{current.version} {old:.4f} on {basis}"
    client.set_model_version_tag(name, version, "comparison", reason)
    return version, better, reason
