"""What a finished study left in the store, read back: its metric, each configuration's cross-validation estimate
(mean and 95 % interval over folds) and parameters, and its folds' best epochs (a refit's training length)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BloodmlError
from .runs import TASK, child_runs, get_run, logged_params


@dataclass(frozen=True)
class StudyConfiguration:
    run_id: str
    name: str
    params: dict[str, str]
    estimate: float  # the study metric's mean over folds
    low: float
    high: float
    folds: int
    best_epochs: tuple[int, ...]


@dataclass(frozen=True)
class FinishedStudy:
    run_id: str
    name: str
    metric: str
    protocol: str
    configurations: list[StudyConfiguration]

    def best(self) -> StudyConfiguration:
        """The configuration with the highest mean of the study's metric (ties: the first run)."""
        return max(self.configurations, key=lambda c: c.estimate)


def finished_study(run_id: str) -> FinishedStudy:
    """The study run ``run_id`` (the parent `bloodml study` logged); one line when it is not a finished study."""
    params = logged_params(run_id)
    run = get_run(run_id)
    if run.data.tags.get(TASK) != "study" or "metric" not in params:
        raise BloodmlError(f"run {run_id} is not a study run (bloodml study logs one, tagged bloodml.task=study); "
                           f"pass the study's parent run ID, or config= and data= instead.")
    metric = params["metric"]
    configurations = []
    for child in child_runs(run_id, finished_only=True):
        if child.data.tags.get(TASK) != "study-configuration":
            continue
        values = child.data.metrics
        if f"test_{metric}_mean" not in values:
            continue
        folds = child_runs(child.info.run_id, finished_only=True)
        configurations.append(StudyConfiguration(
            child.info.run_id, child.info.run_name, dict(child.data.params), values[f"test_{metric}_mean"],
            values.get(f"test_{metric}_ci_low", float("nan")), values.get(f"test_{metric}_ci_high", float("nan")),
            len(folds), tuple(int(f.data.metrics["best_epoch"]) for f in folds if "best_epoch" in f.data.metrics)))
    if not configurations:
        raise BloodmlError(f"study run {run_id} has no finished configuration with test_{metric}_mean; finish it "
                           f"(bloodml study --resume) before refitting.")
    configurations.sort(key=lambda c: c.name)
    return FinishedStudy(run_id, params.get("study", run.info.run_name), metric, params.get("protocol", "cv"),
                         configurations)


def median_best_epoch(configuration: StudyConfiguration) -> int:
    if not configuration.best_epochs:
        raise BloodmlError(f"configuration {configuration.name} logged no best_epoch in its folds; refit with "
                           f"--stopping share.")
    return max(1, int(round(float(np.median(configuration.best_epochs)))))


def tuned_trial(run_id: str, study_name: str, metric: str = "macro_f1") -> FinishedStudy:
    """An Optuna trial's run as a one-configuration study: its test score on its one hold-out split (with its
    interval) is the estimate, its best epoch the refit's length."""
    run = get_run(run_id)
    values = run.data.metrics
    if f"test_{metric}" not in values:
        raise BloodmlError(f"trial run {run_id} logged no test_{metric}; it did not finish.")
    trial = StudyConfiguration(run_id, run.info.run_name, dict(run.data.params), values[f"test_{metric}"],
                               values.get(f"test_{metric}_ci_low", float("nan")),
                               values.get(f"test_{metric}_ci_high", float("nan")), 1,
                               (int(values["best_epoch"]),) if "best_epoch" in values else ())
    return FinishedStudy(run_id, study_name, metric, "hold-out (one split: a trial of an Optuna search)", [trial])
