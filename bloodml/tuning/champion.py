"""Promotion in the Model Registry: the best trial becomes the champion only if it beats the current one,
judged on the validation images the two share (or, failing that, on their recorded objective values)."""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd

from ..evaluation.calls import CallRule
from ..evaluation.scoring import point_scores
from ..predict import model_facts, model_probabilities
from ..tracking.model import load_model
from ..tracking.registry import alias_version, register_version, set_alias, set_version_tag
from ..tracking.runs import download_artifact

SCORES = {"val_macro_f1": "macro_f1", "val_balanced_accuracy": "balanced_accuracy", "val_accuracy": "accuracy"}


def _val_hashes(run_id: str) -> set[str]:
    with tempfile.TemporaryDirectory() as tmp:
        table = pd.read_csv(download_artifact(run_id, "split_manifest.csv", tmp), dtype=str)
    return set(table.loc[table["split"] == "val", "sha256"])


def score_model(model_uri: str, rows: pd.DataFrame, objective: str) -> float | None:
    """The objective of a logged model on given images (rows: path, label, mask_path)."""
    model, meta = load_model(model_uri)
    classes, spec, _ = model_facts(meta)
    if set(rows["label"]) - set(classes):
        return None
    probabilities = model_probabilities(model, spec, list(rows["path"]), list(rows["mask_path"]))
    truth = np.array([classes.index(label) for label in rows["label"]])
    if objective == "val_loss":
        return float(-np.log(np.clip(probabilities[np.arange(len(truth)), truth], 1e-12, 1)).mean())
    return point_scores(truth, probabilities, CallRule.of_model(meta))[SCORES[objective]]


def promote(name: str, run_id: str, objective: str, value: float, val_rows: pd.DataFrame,
            alias: str = "champion") -> tuple[str, bool, str]:
    """Register ``run_id``'s model as a new version of ``name``; move ``alias`` to it only if it is better.

    Returns (version, promoted, reason)."""
    maximise = objective != "val_loss"
    current = alias_version(name, alias)
    if current is not None and current.run_id == run_id:
        return current.version, True, "already the champion"
    version = register_version(run_id, name, {"objective": objective, "objective_value": repr(float(value))})
    if current is None:
        set_alias(name, alias, version)
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
        set_alias(name, alias, version)
    reason = f"{objective} {new:.4f} vs champion v{current.version} {old:.4f} on {basis}"
    set_version_tag(name, version, "comparison", reason)
    return version, better, reason
