"""The final model: the chosen configuration trained on all the data, carrying the estimate it was chosen by.

Cross-validation chooses, then the choice is trained again on every image (scikit-learn's ``GridSearchCV(refit=
True)``): the study's best configuration by its metric, or a given configuration -> every image in training (no
test split) -> how long to train without a test split: the median best epoch of the study's folds for that
configuration (``stopping=epochs``) or early stopping on a small internal validation share (``stopping=share``)
-> one run tagged ``bloodml.kind=refit``, linked to its study, with the study's estimate and interval as its expected
performance (tags, metrics and the run page's description) -> registered on request; ``@champion`` moves only
with ``champion=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace as dc_replace

import numpy as np

from .config import PARAMETERS, RunConfig, build_config
from .errors import BloodmlError
from .runtime import say
from .splitting.prepare import PreparedData, prepare
from .splitting.splits import validation_rows
from .tracking.registry import register_version, set_alias
from .tracking.runs import get_run, set_description, set_tags, log_metrics
from .tracking.store import configure_tracking
from .tracking.studies import FinishedStudy, StudyConfiguration, finished_study, median_best_epoch, tuned_trial
from .train import TrainResult, run_training

STOPPING = ("share", "epochs")


@dataclass
class Chosen:
    config: RunConfig
    study: FinishedStudy | None = None
    configuration: StudyConfiguration | None = None

    def expected(self) -> str:
        """The expected performance in words: the study's estimate, or that there is none."""
        if self.configuration is None:
            return ("not estimated: this configuration was not cross-validated (bloodml study estimates it; a "
                    "refit has no test split to score)")
        c = self.configuration  # a score bounded by 1: its interval too (a t-interval over folds can pass it)
        return (f"{self.study.metric} {c.estimate:.3f} (95% CI {c.low:.3f}-{min(c.high, 1.0):.3f}), the {c.folds}-fold "
                f"{self.study.protocol} estimate of study {self.study.name} for {c.name}")


def chosen_configuration(study: str, config: RunConfig | None, overrides: dict | None = None,
                         trial: tuple[str, str] | None = None) -> Chosen:
    """The study's best configuration (``overrides`` on top, e.g. data=), an Optuna search's best trial
    (``trial``: its run ID and the search's name), or the given configuration."""
    if trial:
        finished = tuned_trial(*trial)
        best = finished.best()
        params = {k: v for k, v in best.params.items() if k in PARAMETERS}
        return Chosen(build_config(None, {**params, **(overrides or {})}), finished, best)
    if study:
        configure_tracking()
        finished = finished_study(study)
        best = finished.best()
        params = {k: v for k, v in best.params.items() if k in PARAMETERS}
        say(f"refitting study {finished.name}'s best configuration by {finished.metric}: {best.name} "
            f"({best.estimate:.3f}, {best.low:.3f}-{min(best.high, 1.0):.3f})")
        return Chosen(build_config(None, {**params, **(overrides or {})}), finished, best)
    if config is None:
        raise BloodmlError("refit needs study=<the study's run ID> or config=<a run configuration .yaml>.")
    return Chosen(config)


def stopping_rule(stopping: str, chosen: Chosen) -> str:
    """share (the default: early stopping on a small validation share), or epochs (the median best epoch of the
    study's folds; without a study, the configuration's epochs). Measured on lymphocytosis-dev
    (experiments/lymphocytosis_study_refit.yaml): a 10 % share 0.823, the median best epoch 0.771 patient ROC-AUC,
    no detectable difference; the share also needs no study."""
    if stopping not in STOPPING:
        raise BloodmlError(f"--stopping {stopping}: unknown; use one of {', '.join(STOPPING)}.")
    if stopping == "epochs" and chosen.configuration is None:
        say(f"note: --stopping epochs without a study: training runs the configuration's epochs={chosen.config.epochs} "
            f"(there are no folds to take a best epoch from)")
    return stopping


def refit_config(chosen: Chosen, stopping: str, val_share: float) -> RunConfig:
    """The configuration as the refit runs it (and logs it): no test split; no validation split and a fixed
    number of epochs, or a validation share for early stopping."""
    config = chosen.config
    if stopping == "epochs":
        epochs = median_best_epoch(chosen.configuration) if chosen.configuration is not None else config.epochs
        config = dc_replace(config, val_fraction=0.0, epochs=epochs, patience=0)
    else:
        config = dc_replace(config, val_fraction=val_share)
    return dc_replace(config, test_fraction=0.0, run_name=f"refit-{config.run_name}" if config.run_name else "refit")


def all_the_data(chosen: Chosen, config: RunConfig, progress: bool) -> PreparedData:
    """Every image in training, but for the validation share (whole groups: patients, copies)."""
    data = prepare(chosen.config, progress=progress)
    table = data.table
    val = validation_rows(np.arange(len(table)), table, config.val_fraction, config.seed)
    split = ["val" if i in val else "train" for i in range(len(table))]
    return dc_replace(data, table=table.assign(split=split))


def refit_tags(chosen: Chosen, stopping: str) -> dict:
    tags = {"bloodml.task": "refit", "bloodml.refit_stopping": stopping, "bloodml.expected": chosen.expected()}
    if chosen.study is not None:
        tags.update({"bloodml.study": chosen.study.name, "bloodml.study_run": chosen.study.run_id,  # trial: its run
                     "bloodml.refit_of": chosen.configuration.run_id,
                     "bloodml.refit_configuration": chosen.configuration.name})
    return tags


@dataclass
class RefitResult:
    run_id: str
    chosen: Chosen
    stopping: str
    training: TrainResult
    version: str = ""


def run_refit(study: str = "", config: RunConfig | None = None, overrides: dict | None = None,
              stopping: str = "share", val_share: float = 0.1, register_name: str = "", alias: str = "",
              champion: bool = False, trial: tuple[str, str] | None = None) -> RefitResult:
    """Refit a study's best configuration (``study``: its run ID), an Optuna search's best trial (``trial``) or
    ``config`` on all its data; log it and register it on request."""
    chosen = chosen_configuration(study, config, overrides, trial)
    stopping = stopping_rule(stopping, chosen)
    if stopping == "share" and not 0 < val_share < 0.5:
        raise BloodmlError(f"--val-share {val_share}: give a share between 0 and 0.5 (e.g. 0.1).")
    final = refit_config(chosen, stopping, val_share)
    data = all_the_data(chosen, final, progress=False)
    say(f"refit on all {len(data.table)} images: " + (
        f"{final.epochs} epochs (the median best epoch of {chosen.configuration.folds} folds), no validation split"
        if stopping == "epochs" and chosen.configuration is not None else
        f"{final.epochs} epochs, no validation split" if stopping == "epochs" else
        f"early stopping on {int((data.table['split'] == 'val').sum())} validation images ({val_share:.0%})"))
    result = run_training(final, data=data, tags=refit_tags(chosen, stopping))
    run_id = result.run_id
    log_expected(chosen, run_id)
    version = ""
    if register_name:
        version = register_version(run_id, register_name, tags={"bloodml.expected": chosen.expected(),
                                                                "bloodml.kind": "refit"})
        for name in [a for a in (alias, "champion" if champion else "") if a]:
            set_alias(register_name, name, version)
        say(f"registered {register_name} version {version}" + "".join(
            f"; models:/{register_name}@{a}" for a in (alias, "champion" if champion else "") if a)
            + ("" if champion else " (@champion not moved: pass --champion true to move it)"))
    say(f"expected performance: {chosen.expected()}")
    return RefitResult(run_id, chosen, stopping, result, version)


def log_expected(chosen: Chosen, run_id: str) -> None:
    """The estimate as metrics (sortable in the UI) and first in the run page's description."""
    if chosen.configuration is not None:
        c, metric = chosen.configuration, chosen.study.metric
        log_metrics({f"expected_{metric}": c.estimate, f"expected_{metric}_ci_low": c.low,
                     f"expected_{metric}_ci_high": min(c.high, 1.0), "expected_folds": float(c.folds)}, run_id=run_id)
    run = get_run(run_id)
    body = run.data.tags.get("mlflow.note.content", "")
    head = f"**Refit on all the data** of {chosen.config.data}. Expected performance: {chosen.expected()}."
    set_description(head + "\n\n" + body, run_id)
    set_tags({"bloodml.expected": chosen.expected()}, run_id)

