"""A configuration's expected performance before its refit: a one-configuration study (repeated, group-aware
cross-validation, as every study), then the refit on all the data carrying that study's estimate. This is what
``bloodml refit --config`` does unless told not to (``--estimate false``)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from ..config import RunConfig
from ..refit import RefitResult, run_refit
from ..runtime import say
from ..splitting.splits import dataset_name
from .runner import run_study
from .spec import Configuration, StudySpec


def estimate_metric(config: RunConfig) -> str:
    """Patients (group_column): the patient-level ROC-AUC; otherwise macro-F1."""
    return "group_roc_auc" if config.group_column else "macro_f1"


def estimate_name(config: RunConfig) -> str:
    """The estimate study's name (and report folder's suffix): estimate-<run name or dataset>."""
    stem = re.sub(r"\.(csv|ya?ml|zip)$", "", config.run_name or dataset_name(config.data))
    return "estimate-" + re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-")


def estimate_and_refit(config: RunConfig, out: Path, folds: int = 5, repeats: int = 3, **refit: object) -> RefitResult:
    """Cross-validate ``config`` alone (``folds`` x ``repeats``, its own validation share inside each training
    fold), then refit it on all the data with that estimate; ``refit`` passes on to :func:`run_refit`."""
    name = estimate_name(config)
    spec = StudySpec(name=name, base=config, protocol="cv", folds=folds, repeats=repeats,
                     val_fraction=config.val_fraction, metric=estimate_metric(config),
                     configurations=[Configuration(name[len("estimate-"):], {},
                                                   replace(config, run_name=name[len("estimate-"):]))])
    say(f"estimating first: {folds} x {repeats} cross-validation of this configuration ({spec.metric}), then the "
        f"refit on all the data")
    result = run_study(spec, out)
    return run_refit(study=result.parent_run_id, **refit)
