"""A study run by many workers that share an Optuna storage (PostgreSQL): Optuna's storage is the queue.

The study's cells (configuration x fold) are enqueued once, as trials with a fixed ``cell`` parameter, by the
worker that creates the Optuna study; every worker (`bloodml study --storage <url> --worker`, on any machine)
asks for the next waiting cell, runs its fold as the one-process study would (same seeds, so the same scores),
and stores the fold's scores on the trial. A running cell records a heartbeat; a cell whose worker died is failed
by the next worker that looks (``fail_stale_trials``) and enqueued again (Optuna's retry callback), and its
MLflow fold run is marked FAILED. The first completed trial of each cell is the one counted, so no cell counts
twice. The report is written once, when every cell is in: by the worker that completed the last cell, or by
`bloodml study-report <study run>`, which also shows progress.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from ..errors import BloodmlError
from ..runtime import say
from ..refit import run_refit
from ..tracking.runs import adopt_launched_run, create_run, get_run, set_description, set_tags
from ..tracking.store import configure_tracking, ui_hint
from ..tuning.storage import HEARTBEAT_S, Heartbeat, open_storage, shown_storage
from .protocol import Fold
from .spec import LOSO, StudySpec
from .runner import (StudyResult, aggregate_configuration, audit_folds, close_study_run, compare_configurations,
                     configuration_run, run_fold, study_data, study_folds, study_setup, write_report)

CELL = "cell"


@dataclass(frozen=True)
class Cell:
    index: int
    configuration: int
    fold: int


def cells_of(spec: StudySpec, folds: list[Fold]) -> list[Cell]:
    """Every (configuration, fold) pair, configuration-major: the order a one-process study runs them in."""
    return [Cell(c * len(folds) + f, c, f) for c in range(len(spec.configurations)) for f in range(len(folds))]


def shared_name(spec: StudySpec, folds: list[Fold]) -> str:
    """The Optuna study's name: the study's name and a fingerprint of its configurations and folds (a changed study
    file never mixes with an older one's cells)."""
    content = json.dumps([[c.name, c.config.to_params()] for c in spec.configurations] + [list(f.split) for f in folds],
                         sort_keys=True)
    return f"bloodml-study-{spec.name}-{hashlib.sha256(content.encode()).hexdigest()[:10]}"


def fixed_cell(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The cell an enqueued trial carries; None for a trial Optuna made because nothing was waiting."""
    fixed = study._storage.get_trial(trial._trial_id).system_attrs.get("fixed_params") or {}
    return int(fixed[CELL]) if CELL in fixed else None


def counted(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    """Each done cell's first completed trial (a retried cell that somehow completed twice counts once)."""
    done: dict[int, optuna.trial.FrozenTrial] = {}
    for trial in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                        key=lambda t: (t.datetime_complete, t.number)):
        cell = trial.user_attrs.get(CELL)
        if cell is not None and cell not in done:
            done[int(cell)] = trial
    return done


@dataclass
class Progress:
    total: int
    done: int
    running: int
    waiting: int
    failed: int

    def line(self) -> str:
        return (f"cells: {self.done} done, {self.running} running, {self.waiting} waiting of {self.total}"
                + (f" ({self.failed} failed attempt(s), retried)" if self.failed else ""))


def progress(study: optuna.Study, total: int) -> Progress:
    trials = study.get_trials(deepcopy=False)
    done = counted(study)
    running = {t.user_attrs.get(CELL) for t in trials if t.state == TrialState.RUNNING} - set(done) - {None}
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    failed = sum(1 for t in trials if t.state == TrialState.FAIL)
    return Progress(total, len(done), len(running), waiting, failed)


def open_shared_study(spec: StudySpec, folds: list[Fold], storage_url: str, wait_s: float = 300.0):
    """The shared Optuna study, created (with the study's MLflow runs and every cell enqueued) by the first worker
    and joined by the others. Returns (study, storage, the MLflow study run, {configuration: its run})."""
    storage = open_storage(storage_url)
    name = shared_name(spec, folds)
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(0),
                                    load_if_exists=False)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        created = False
    if created:
        params = {"study": spec.name, "protocol": spec.protocol, "folds": spec.folds, "repeats": spec.repeats,
                  "metric": spec.metric, "configurations": len(spec.configurations), "data": spec.base.data,
                  "storage": shown_storage(storage_url), "study_file": spec.source, "overrides": json.dumps(
                      spec.overrides, sort_keys=True)}
        tags = {"bloodml.task": "study", "optuna.study": name}
        parent = adopt_launched_run(tags, params, spec.base.experiment, f"study-{spec.name}") or create_run(
            spec.base.experiment, f"study-{spec.name}", None, tags, params)
        runs = {c.name: configuration_run(spec, c, parent) for c in spec.configurations}
        study.set_user_attr("mlflow_parent_run_id", parent)
        study.set_user_attr("configuration_runs", runs)
        for cell in cells_of(spec, folds):
            study.enqueue_trial({CELL: cell.index})
        study.set_user_attr("cells", len(folds) * len(spec.configurations))  # last: the others wait for it
        say(f"study {spec.name}: {len(folds) * len(spec.configurations)} cells enqueued in Optuna study {name} "
            f"({shown_storage(storage_url)})")
    deadline = time.monotonic() + wait_s
    while "cells" not in study.user_attrs:
        if time.monotonic() > deadline:
            raise BloodmlError(f"Optuna study {name} in {shown_storage(storage_url)} has no cells after {wait_s:.0f} "
                               f"s: the worker that created it stopped early; delete the study and start again.")
        time.sleep(1.0)
        study = optuna.load_study(study_name=name, storage=storage)
    parent = study.user_attrs["mlflow_parent_run_id"]
    if not created and (launched := adopt_launched_run({"bloodml.task": "study-worker"}, None, "", "")):
        set_description(f"a worker of study {spec.name}: its runs nest under run {parent}.", launched)
    return study, storage, parent, dict(study.user_attrs["configuration_runs"])


def run_worker(spec: StudySpec, out: Path, storage_url: str) -> StudyResult | None:
    """Take cells until none is left; the worker that completes the last one writes the report."""
    if spec.protocol not in ("cv", "holdout", LOSO):
        raise BloodmlError(f"--worker shares out cv, holdout and {LOSO} studies; run this {spec.protocol} study in "
                           f"one process (bloodml study --config {spec.source}).")
    started = time.perf_counter()
    uri, data, folds = study_setup(spec)
    study, storage, parent, config_runs = open_shared_study(spec, folds, storage_url)
    cells = cells_of(spec, folds)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    say(f"worker {worker}: {progress(study, len(cells)).line()}")
    mine: set[int] = set()
    idle = 0
    while True:
        optuna.storages.fail_stale_trials(study)  # a dead worker's cell: FAILED, its fold run too, and enqueued again
        state = progress(study, len(cells))
        if state.done == len(cells):
            break
        if state.waiting:
            idle = 0
        else:
            idle = idle + 1 if not state.running else 0
            if state.running or idle < 5:  # cells running (or their workers dead: seen after GRACE_S), or a
                time.sleep(HEARTBEAT_S)    # failed cell being enqueued again by another worker just now
                continue
            raise BloodmlError(f"study {spec.name}: {len(cells) - state.done} cell(s) failed and are not retried "
                               f"any more; see the failed fold runs, fix the cause and start a worker again.")
        trial = study.ask()
        index = fixed_cell(study, trial)
        if index is None or index in counted(study):  # nothing was waiting after all, or a retry of a done cell
            study.tell(trial, state=TrialState.PRUNED)
            continue
        cell = cells[index]
        configuration, fold = spec.configurations[cell.configuration], folds[cell.fold]
        trial.set_user_attr(CELL, index)
        trial.set_user_attr("worker", worker)
        say(f"worker {worker}: cell {index + 1}/{len(cells)}: {configuration.name} fold {fold.name}")
        with Heartbeat(storage, trial._trial_id):
            try:
                scores, ratio, run_id = run_fold(spec, configuration, data, fold, config_runs[configuration.name],
                                                 extra_tags={"optuna.study": study.study_name,
                                                             "optuna.trial": str(trial.number)})
            except Exception:
                study.tell(trial, state=TrialState.FAIL)
                raise
            trial.set_user_attr("scores", scores)
            trial.set_user_attr("ratio", ratio)
            trial.set_user_attr("mlflow_run_id", run_id)
            study.tell(trial, 0.0)
        mine.add(trial.number)
    last = max(counted(study).values(), key=lambda t: (t.datetime_complete, t.number))
    if last.number not in mine or study.user_attrs.get("report"):
        say(f"worker {worker}: every cell is in; the report is written by the worker that completed the last one "
            f"(or: bloodml study-report {parent})")
        return None
    return write_shared_report(spec, data, folds, study, parent, config_runs, out, time.perf_counter() - started,
                               uri)


def write_shared_report(spec: StudySpec, data, folds: list[Fold], study: optuna.Study, parent: str,
                        config_runs: dict[str, str], out: Path, seconds: float, uri: str) -> StudyResult:
    """The report of a complete shared study, from its counted cells, as the one-process study writes it."""
    done = counted(study)
    cells = cells_of(spec, folds)
    scores, ratios = {}, []
    for position, configuration in enumerate(spec.configurations):
        per_fold = [done[c.index] for c in cells if c.configuration == position]
        per_metric: dict[str, list[float]] = {}
        for trial in per_fold:
            for metric, value in trial.user_attrs["scores"].items():
                per_metric.setdefault(metric, []).append(float(value))
            ratios.append(float(trial.user_attrs["ratio"]))
        scores[configuration.name] = per_metric
        aggregate_configuration(per_metric, config_runs[configuration.name])
    leaks = audit_folds(data, folds)
    result = StudyResult(spec, scores, compare_configurations(spec, scores, float(np.mean(ratios))), folds, leaks,
                         None, parent, seconds)
    result.report = write_report(result, data.table, data.notes, out)
    close_study_run(result, out)
    study.set_user_attr("report", str(out))
    for comparison in result.comparisons:
        say(f"{comparison.question}: {comparison.verdict()}")
    say(f"report: {result.report}; see it: {ui_hint(uri)}")
    if spec.refit:  # the study file asks for the final model: the reporting process trains it
        result.refit_run_id = run_refit(study=parent).run_id
        set_tags({"bloodml.refit_run": result.refit_run_id}, parent)
    return result


def study_report(run_id: str, out: Path | None = None, storage_url: str = "") -> StudyResult | Progress:
    """`bloodml study-report <study run>`: a shared study's progress and, once every cell is in, its report
    (written now if no worker wrote it)."""
    from .spec import load_study  # the study file the run logged, read again

    configure_tracking()
    run = get_run(run_id)
    params, tags = run.data.params, run.data.tags
    if "optuna.study" not in tags:
        raise BloodmlError(f"run {run_id} is not a shared study's run (bloodml study --storage ... --worker makes "
                           f"one); a one-process study writes its report itself.")
    storage_url = storage_url or os.environ.get("BLOODML_OPTUNA_STORAGE") or params.get("storage", "")
    if "***" in storage_url:
        raise BloodmlError("the study's storage URL had a password (shown as ***): pass --storage, or keep the "
                           "password in PGPASSFILE / PGPASSWORD.")
    spec = load_study(params["study_file"], json.loads(params.get("overrides") or "{}"))
    study = optuna.load_study(study_name=tags["optuna.study"], storage=open_storage(storage_url))
    total = int(study.user_attrs.get("cells", 0))
    state = progress(study, total)
    say(f"study {spec.name} ({tags['optuna.study']}): {state.line()}")
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        say(f"  running: cell {int(trial.user_attrs.get(CELL, -1)) + 1} on {trial.user_attrs.get('worker', '?')}")
    if state.done < total:
        return state
    if study.user_attrs.get("report") and out is None:
        say(f"every cell is in; the report was written to {study.user_attrs['report']} and logged to run {run_id}")
        return state
    data = study_data(spec)
    folds = study_folds(spec, data)
    return write_shared_report(spec, data, folds, study, run_id, dict(study.user_attrs["configuration_runs"]),
                               out or Path(f"study-{spec.name}"), 0.0, configure_tracking())
