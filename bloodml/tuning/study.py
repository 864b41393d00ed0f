"""One Optuna study, run by one or many workers: every trial is a nested MLflow run under the study's parent
run, pruned per epoch on the validation objective; at the end the best trial's model is promoted in the
Model Registry. Several workers (on several machines) share a study through its storage (PostgreSQL)."""

from __future__ import annotations

import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..config import RunConfig, replace
from ..splitting.prepare import prepare
from ..errors import BloodmlError
from ..runtime import configure, say, show_progress
from ..tracking.runs import adopt_launched_run, create_run, delete_run, find_runs, finish_run, launched_run_id, \
    log_folder, log_metrics, set_description, set_tags
from ..tracking.registry import RegistryPermissionError
from ..tracking.store import configure_tracking, ui_hint
from ..train import StopRun, run_training
from ..refit import run_refit
from .champion import promote
from .space import load_space, suggest
from .storage import HEARTBEAT_S, Heartbeat, open_storage, shown_storage

OBJECTIVES = {"val_macro_f1": "maximize", "val_balanced_accuracy": "maximize", "val_accuracy": "maximize",
              "val_loss": "minimize"}
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


@dataclass(frozen=True)
class TuneSettings:
    n_trials: int = 20
    timeout: float = 0.0  # seconds this worker may keep starting trials (0: no limit)
    study_name: str = ""
    storage: str = "sqlite:///optuna.db"
    objective: str = "val_macro_f1"
    space: str = ""  # YAML replacing the default search space
    pruner: str = "median"  # median, halving or none
    model_name: str = ""  # registry name (default derived from the data)
    alias: str = "champion"
    refit: bool = False  # then train the best trial's configuration on all the data (bloodml refit), as @refit


def default_model_name(config: RunConfig) -> str:
    stem = Path(str(config.data).rstrip("/")).stem or "data"
    task = "-" + re.sub(r"[^A-Za-z0-9]+", "-", config.positive_classes) + "-vs-rest" if config.positive_classes else ""
    return re.sub(r"-+", "-", f"bloodml-{stem}{task}").strip("-").lower()


def default_study_name(config: RunConfig) -> str:
    return f"{default_model_name(config)}-{config.backbone}-{config.masks}"


def _pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=2)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise BloodmlError(f"pruner='{name}' is unknown; use median, halving or none.")


def dashboard_hint(url: str) -> str:
    """The command that watches the study in optuna-dashboard (a password shown as ***: type it yourself)."""
    return f"watch it: optuna-dashboard {shown_storage(url)}   (then open http://127.0.0.1:8080)"


def _parent_run(study: optuna.Study, config: RunConfig, settings: TuneSettings) -> str:
    """The study's one parent MLflow run, shared by every worker (its ID lives in the study's attributes)."""
    known = study.user_attrs.get("mlflow_parent_run_id")
    if known:
        return known
    tags = {"bloodml.task": "tune", "optuna.study": study.study_name}
    params = {**{f"fixed.{k}": v for k, v in config.to_params().items()},
              "n_trials": settings.n_trials, "objective": settings.objective, "pruner": settings.pruner,
              "storage": shown_storage(settings.storage), "space": settings.space or "default"}
    # launched by `mlflow run -e tune` into the configured experiment: that run is the parent; otherwise a new one
    parent = adopt_launched_run(tags, params, config.experiment, f"tune-{study.study_name}") or create_run(
        config.experiment, f"tune-{study.study_name}", None, tags, params)
    # Workers starting together may each have made one: the earliest-started parent of this study wins.
    candidates = find_runs(f"tags.`optuna.study` = '{study.study_name}' and tags.`bloodml.task` = 'tune'")
    winner = min(candidates, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if candidates else parent
    if winner != parent:
        if launched_run_id() == parent:
            set_tags({"bloodml.parent": winner}, parent)  # cannot delete the run we are in
        else:
            delete_run(parent)
    study.set_user_attr("mlflow_parent_run_id", winner)
    return winner


def _slot_taken(study: optuna.Study, number: int, n_trials: int) -> bool:
    """True when ``n_trials`` counted trials with smaller numbers exist (this trial would be one too many)."""
    earlier = [t for t in study.get_trials(deepcopy=False, states=COUNTED) if t.number < number]
    return len(earlier) >= n_trials


def _log_study_plots(study: optuna.Study, parent_run_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    plots = {"optimization_history": vis.plot_optimization_history, "slice": vis.plot_slice}
    if len(finished) >= 2:
        plots["param_importances"] = vis.plot_param_importances
    with tempfile.TemporaryDirectory() as tmp:
        for name, plot in plots.items():
            try:
                with warnings.catch_warnings():  # matplotlib's layout advice on a one-trial plot: noise in the log
                    warnings.simplefilter("ignore", UserWarning)
                    axes = plot(study)
                    figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
                    figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5))
                    figure.tight_layout()
                    figure.savefig(Path(tmp) / f"{name}.png", dpi=100)
                plt.close("all")
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                say(f"note: study plot {name} skipped ({exc})")
        study.trials_dataframe().to_csv(Path(tmp) / "trials.csv", index=False)
        log_folder(tmp, "study", parent_run_id)


def tune_description(study: str, summary: dict, best: int, objective: str, value: float, run_id: str, name: str,
                     version, promoted: bool, reason: str) -> str:
    """The tuning run's Description: trials, the winner, and what the registry did."""
    return (f"Optuna study **{study}**: {summary['complete']} complete, {summary['pruned']} pruned, "
            f"{summary['failed']} failed trials.\n\nBest trial {best}: {objective} = {value:.4f} (run {run_id}).\n\n"
            f"Registry: {name} version {version}, " + ("now the champion" if promoted else "champion unchanged")
            + f" ({reason}).\n\nPlots and every trial's parameters: study/ (trials.csv).\n")


def tune(config: RunConfig, settings: TuneSettings) -> dict:
    """Run trials until the study holds ``n_trials`` finished or pruned trials (counting every worker's)."""
    if settings.objective not in OBJECTIVES:
        raise BloodmlError(f"objective='{settings.objective}' is unknown; use one of {', '.join(OBJECTIVES)}.")
    if settings.n_trials < 1:
        raise BloodmlError(f"n_trials={settings.n_trials} must be at least 1.")
    space = load_space(settings.space)
    configure(config.threads, config.seed)
    uri = configure_tracking()
    name = settings.study_name or default_study_name(config)
    storage = open_storage(settings.storage)
    sampler = optuna.samplers.TPESampler(seed=config.seed + os.getpid() if not settings.storage.startswith("sqlite")
                                         else config.seed)
    study = optuna.create_study(study_name=name, storage=storage, direction=OBJECTIVES[settings.objective],
                                sampler=sampler, pruner=_pruner(settings.pruner), load_if_exists=True)
    say(dashboard_hint(settings.storage))
    data = prepare(config, progress=show_progress())
    parent = _parent_run(study, config, settings)
    final_metric = {"val_loss": "val_final_loss"}.get(settings.objective, settings.objective.replace("val_", "val_final_"))

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space)
        trial_config = replace(config, **values, run_name=f"{name}-trial-{trial.number}")

        def report(record):
            trial.report(getattr(record, settings.objective), record.epoch)
            if trial.should_prune():
                raise StopRun(f"pruned by Optuna at epoch {record.epoch}")

        tags = {"optuna.study": name, "optuna.trial": str(trial.number), "bloodml.task": "tune-trial"}
        try:
            result = run_training(trial_config, data=data, parent_run_id=parent, tags=tags, epoch_hook=report)
        except StopRun as stop:
            raise optuna.TrialPruned(str(stop))
        trial.set_user_attr("mlflow_run_id", result.run_id)
        set_tags({"bloodml.state": "COMPLETE"}, result.run_id)
        return result.metrics[final_metric]

    started, failures, mine = time.monotonic(), 0, set()
    while True:
        optuna.storages.fail_stale_trials(study)  # trials of dead workers: FAILED, and retried once
        if settings.timeout and time.monotonic() - started > settings.timeout:
            break
        counted = study.get_trials(deepcopy=False, states=COUNTED)
        if len(counted) >= settings.n_trials:
            if any(t.state == TrialState.RUNNING for t in counted):
                time.sleep(HEARTBEAT_S)  # others still running (or dead): wait, so the study really completes
                continue
            break
        trial = study.ask()
        if _slot_taken(study, trial.number, settings.n_trials):
            study.tell(trial, state=TrialState.FAIL)  # raced another worker for the last slot; nothing ran
            break
        mine.add(trial.number)
        say(f"trial {trial.number} ({len(counted) + 1}/{settings.n_trials}) of study {name}")
        with Heartbeat(storage, trial._trial_id):
            try:
                value = objective(trial)
                study.tell(trial, value)
                failures = 0
                say(f"trial {trial.number} finished: {settings.objective} {value:.4f}")
            except optuna.TrialPruned as pruned:
                study.tell(trial, state=TrialState.PRUNED)
                say(f"trial {trial.number} {pruned}")
            except BloodmlError:
                study.tell(trial, state=TrialState.FAIL)
                raise
            except Exception as exc:  # one bad trial must not end the study
                study.tell(trial, state=TrialState.FAIL)
                failures += 1
                say(f"trial {trial.number} failed: {type(exc).__name__}: {exc}")
                if failures >= 3:
                    raise BloodmlError(f"3 trials in a row failed (last: {type(exc).__name__}: {exc}); "
                                       f"fix the cause and rerun with study_name={name} to continue.")
    return finish(study, config, settings, parent, data, uri, mine)


def finish(study: optuna.Study, config: RunConfig, settings: TuneSettings, parent: str, data, uri: str,
           mine: set[int]) -> dict:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    summary = {"study": study.study_name, "parent_run_id": parent,
               "complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
               "failed": states.count(TrialState.FAIL), "running": states.count(TrialState.RUNNING)}
    say(f"study {study.study_name}: {summary['complete']} complete, {summary['pruned']} pruned, "
        f"{summary['failed']} failed, {summary['running']} still running elsewhere")
    ended = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))]
    last = max(ended, key=lambda t: (t.datetime_complete, t.number)).number if ended else None
    if summary["running"] or summary["complete"] == 0 or (mine and last not in mine):
        return summary  # exactly one worker (the one that ended the study's last trial) registers the champion
    best = study.best_trial
    run_id = best.user_attrs["mlflow_run_id"]
    name = settings.model_name or default_model_name(config)
    val_rows = data.split("val")
    try:
        version, promoted, reason = promote(name, run_id, settings.objective, best.value, val_rows, settings.alias)
    except RegistryPermissionError as refused:  # may log trials, may not promote: leave it to whoever may
        version, promoted = "none", False
        reason = (f"{refused}; promote run {run_id} with 'bloodml register {run_id} --name {name} --alias "
                  f"{settings.alias}' as a user who may")
    log_metrics({f"best_{settings.objective}": best.value}, run_id=parent)
    set_tags({"best_trial": str(best.number), "best_run_id": run_id, "registered_model": name,
              "registered_version": str(version), "champion_promoted": str(promoted).lower()}, parent)
    _log_study_plots(study, parent)
    set_description(tune_description(study.study_name, summary, best.number, settings.objective, best.value, run_id,
                                     name, version, promoted, reason), parent)
    finish_run(parent)
    say(f"best trial {best.number}: {settings.objective} {best.value:.4f} (run {run_id})")
    if version == "none":
        say(f"registry: nothing registered: {reason}")
    else:
        say(f"registry: {name} version {version} " + (f"is now @{settings.alias}" if promoted else
                                                      f"registered, @{settings.alias} unchanged") + f" ({reason})")
    refit_run = ""
    if settings.refit:  # the search chose on one split; the final model trains on all of it
        refit_run = run_refit(trial=(run_id, study.study_name), register_name=name if version != "none" else "",
                              alias="refit", overrides={"experiment": config.experiment}).run_id
    say(f"see it: {ui_hint(uri)}")
    say(dashboard_hint(settings.storage))
    return {**summary, "refit_run_id": refit_run, "best_trial": best.number, "best_value": best.value, "best_run_id": run_id,
            "model_name": name, "version": version, "promoted": promoted}
