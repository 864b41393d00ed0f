"""Runs in MLflow: start, nest, attach to the run `mlflow run` made, log parameters, metrics, tags and files,
find runs, finish them. The rest of bloodml calls these and never mlflow itself."""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.exceptions import MlflowException

from ..splitting.splits import manifest_digest
from ..errors import BloodmlError

LAUNCHED_RUN = "MLFLOW_RUN_ID"  # set by `mlflow run` for the entry point's process: that run is ours
TASK, KIND = "bloodml.task", "bloodml.kind"
# What the UI filters on (tags.`bloodml.kind` = 'fold'): a few kinds over bloodml's precise tasks.
KIND_OF_TASK = {"train": "train", "tune-trial": "trial", "tune": "study", "study": "study",
                "study-configuration": "study", "study-fold": "fold", "segment": "segment",
                "segment-evaluate": "segment", "evaluate": "evaluate", "pretrain": "pretrain",
                "adapt": "adapt", "suggest": "suggest", "refit": "refit"}
DESCRIPTION = "mlflow.note.content"  # the run page's Description


def with_kind(tags: dict | None) -> dict:
    """Tags with ``bloodml.kind`` added wherever ``bloodml.task`` says what the run is."""
    tags = dict(tags or {})
    if TASK in tags and str(tags[TASK]) in KIND_OF_TASK:
        tags.setdefault(KIND, KIND_OF_TASK[str(tags[TASK])])
    return tags


def launched_run_id() -> str | None:
    """The run `mlflow run` made for this process, if it launched us."""
    return os.environ.get(LAUNCHED_RUN) or None


def detach_launched_run() -> None:
    """Child and resumed runs must not take over the launched run: MLflow's start_run consumes the variable."""
    os.environ.pop(LAUNCHED_RUN, None)


def _client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient()


def experiment_id(name: str) -> str:
    """The experiment's ID, creating it if needed."""
    return mlflow.set_experiment(name).experiment_id


@contextmanager
def tracked_run(experiment: str, run_name: str, parent_run_id: str | None = None, tags: dict | None = None):
    """Start (or, under `mlflow run`, attach to) the active run of any command (train, evaluate, segment, ...); a
    child of ``parent_run_id`` when given.

    Sets the experiment only when not launched by `mlflow run` (which names the run itself)."""
    if parent_run_id:
        detach_launched_run()
        parent_experiment = _client().get_run(parent_run_id).info.experiment_id
        with mlflow.start_run(run_name=run_name or None, experiment_id=parent_experiment, parent_run_id=parent_run_id,
                              nested=mlflow.active_run() is not None, tags=with_kind(tags)) as run:
            yield run
        return
    if not launched_run_id():
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name or None, tags=with_kind(tags)) as run:
        yield run


@contextmanager
def resumed_run(run_id: str):
    """Reopen an interrupted run (same run ID, same experiment) to continue logging into it."""
    detach_launched_run()
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def end_active_run(status: str) -> None:
    mlflow.end_run(status)


def _run_id(run_id: str | None) -> str:
    return run_id or mlflow.active_run().info.run_id


def log_params(params: dict, run_id: str | None = None) -> None:
    """Log every parameter not already on the run (`mlflow run` logs the -P values itself; params are
    immutable), in batches."""
    run_id = _run_id(run_id)
    existing = _client().get_run(run_id).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    for start in range(0, len(new), 100):
        _client().log_batch(run_id, params=new[start:start + 100])


def set_tags(tags: dict, run_id: str | None = None) -> None:
    run_id = _run_id(run_id)
    for key, value in with_kind(tags).items():
        _client().set_tag(run_id, key, str(value))


def set_description(text: str, run_id: str | None = None, limit: int = 7_900) -> None:
    """The run page's Description (markdown): what happened, without opening the artefacts (a tag value: at most
    about 8,000 characters, so a longer text ends with a pointer to the artefacts)."""
    if len(text) > limit:
        text = text[:limit].rsplit("\n", 1)[0] + "\n\n(cut here; the whole text is in the run's artefacts)\n"
    _client().set_tag(_run_id(run_id), DESCRIPTION, text)


def log_datasets(splits: dict[str, pd.DataFrame], name: str, source: str, digests: dict[str, str],
                 run_id: str | None = None) -> None:
    """One MLflow dataset per split (its manifest rows, with ``digests[split]``), the split as its context: the
    runs table's Dataset column and the run page's Datasets used."""
    inputs = []
    for context, table in splits.items():
        with warnings.catch_warnings():  # a local path matches MLflow's two local-file sources; both are the same
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = mlflow.data.from_pandas(table, source=source, name=name, targets="label",
                                              digest=digests[context])
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    _client().log_inputs(_run_id(run_id), datasets=inputs)


def metric_key(name: str) -> str:
    """``name`` as MLflow accepts a metric name on every platform: per-class metrics carry the user's class names
    ("T-Zelle (CD3+)", "seg, band"), and MLflow takes letters (accented ones too), digits, ``_ - . /`` and spaces
    only, and no path tricks. Anything else becomes ``_``."""
    key = re.sub(r"[^\w.\- /]", "_", name)
    if posixpath.normpath(key) != key or key.startswith(("/", "..")):
        key = key.replace("/", "_").replace("..", "__")
    return key[:250]


def metric_keys(names) -> dict[str, str]:
    """Each name's MLflow key; two names that would share one (``a(1)`` and ``a,1``) keep apart with a short hash
    of the name."""
    keys, taken = {}, set()
    for name in names:
        key = metric_key(name)
        if key in taken:
            key = f"{key[:240]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
        keys[name] = key
        taken.add(key)
    return keys


def log_metrics(metrics: dict[str, float], step: int = 0, run_id: str | None = None) -> None:
    """All metrics at one step, in batches of 1,000 (values that are not finite are logged as MLflow stores them);
    names made acceptable to MLflow by :func:`metric_keys`."""
    stamp = int(pd.Timestamp.now().timestamp() * 1000)
    keys = metric_keys(metrics)
    items = [Metric(keys[k], float(v), stamp, step) for k, v in metrics.items()]
    run_id = _run_id(run_id)
    for start in range(0, len(items), 1000):
        _client().log_batch(run_id, metrics=items[start:start + 1000])


def log_metric_batch(run_id: str, metrics: list) -> None:
    """Pre-built :class:`mlflow.entities.Metric` values (the outage buffer keeps these)."""
    _client().log_batch(run_id, metrics=metrics)


def metric(key: str, value: float, step: int) -> Metric:
    return Metric(key, float(value), int(pd.Timestamp.now().timestamp() * 1000), step)


def logged_steps(run_id: str, key: str) -> set[int]:
    return {m.step for m in _client().get_metric_history(run_id, key)}


def log_folder(folder: str | Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
    _client().log_artifacts(_run_id(run_id), str(folder), artifact_path=artifact_path)


def log_table(table: pd.DataFrame, artifact_file: str, run_id: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        table.to_csv(path, index=False)
        parent = str(Path(artifact_file).parent)
        _client().log_artifact(_run_id(run_id), str(path), artifact_path=None if parent == "." else parent)


def log_split_manifest(manifest: pd.DataFrame, name: str, source: str, run_id: str | None = None) -> None:
    """The split manifest as ``split_manifest.csv``, and each split as an MLflow dataset (train, val, test; a
    study's folds too) with the digest of what it holds; with several sources, each source's splits as its own
    dataset."""
    log_table(manifest, "split_manifest.csv", run_id)
    several = "source" in manifest and manifest["source"].nunique() > 1
    parts = manifest.groupby("source", sort=False) if several else [(name, manifest)]
    for dataset, rows_of_dataset in parts:  # several sources: one dataset per source, each split its context
        splits = {str(split): rows.reset_index(drop=True) for split, rows in rows_of_dataset.groupby("split",
                                                                                                      sort=False)}
        order = {"train": 0, "val": 1, "test": 2}
        splits = dict(sorted(splits.items(), key=lambda item: order.get(item[0], 3)))
        log_datasets(splits, str(dataset), source, {split: manifest_digest(rows) for split, rows in splits.items()},
                     run_id)


def download_artifact(run_id: str, path: str, destination: str | Path) -> str:
    return _client().download_artifacts(run_id, path, str(destination))


def create_run(experiment: str, name: str, parent_run_id: str | None = None, tags: dict | None = None,
               params: dict | None = None, experiment_of_parent: bool = True) -> str:
    """A run that is not the active one (studies and tuning keep several open), nested under ``parent_run_id``."""
    if parent_run_id and experiment_of_parent:
        experiment_id_ = _client().get_run(parent_run_id).info.experiment_id
    else:
        experiment_id_ = experiment_id(experiment)
    all_tags = {**with_kind(tags), **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    run_id = _client().create_run(experiment_id_, run_name=name, tags=all_tags).info.run_id
    if params:
        log_params(params, run_id)
    return run_id


def adopt_launched_run(tags: dict, params: dict | None = None, experiment: str = "", name: str = "") -> str | None:
    """Under `mlflow run`, the launched run becomes the parent of what follows: named ``name``, tagged (and
    ``params`` logged). Returns its ID, or None when not launched by `mlflow run`, or when `mlflow run` put it in
    another experiment than ``experiment`` (its default one, unless given --experiment-name): the parent is then
    made in ``experiment`` by the caller, and the launched run is left as a named pointer to it."""
    run_id = launched_run_id()
    if not run_id:
        return None
    if experiment and _client().get_run(run_id).info.experiment_id != experiment_id(experiment):
        _client().set_tag(run_id, "mlflow.runName", f"{name} (runs in experiment {experiment})")
        set_description(f"`mlflow run` started this run in its default experiment. {name} and all its runs are in "
                        f"experiment '{experiment}' (`mlflow run --experiment-name {experiment}` keeps them "
                        f"together).", run_id)
        return None
    if name:
        _client().set_tag(run_id, "mlflow.runName", name)
    set_tags(tags, run_id)
    if params:
        log_params(params, run_id)
    return run_id


def finish_run(run_id: str, status: str = "FINISHED") -> None:
    _client().set_terminated(run_id, status)


def reopen_run(run_id: str) -> None:
    _client().update_run(run_id, status="RUNNING")


def delete_run(run_id: str) -> None:
    _client().delete_run(run_id)


def get_run(run_id: str):
    return _client().get_run(run_id)


def find_runs(filter_string: str, order_by: list[str] | None = None, experiment_ids: list[str] | None = None) -> list:
    """Runs matching an MLflow search filter, across all experiments unless ``experiment_ids`` narrows it."""
    if experiment_ids:
        return mlflow.search_runs(experiment_ids=experiment_ids, filter_string=filter_string, output_format="list",
                                  order_by=order_by)
    return mlflow.search_runs(search_all_experiments=True, filter_string=filter_string, output_format="list",
                              order_by=order_by)


def logged_params(run_id: str) -> dict[str, str]:
    """The parameters a run logged; a one-line error when the run is not in the store."""
    try:
        return dict(get_run(run_id).data.params)
    except MlflowException:
        raise BloodmlError(f"run {run_id} not found in {mlflow.get_tracking_uri()}; check the ID and "
                           f"MLFLOW_TRACKING_URI.")


def child_runs(parent_run_id: str, finished_only: bool = False) -> list:
    """The runs nested directly under ``parent_run_id``."""
    status = " and attributes.status = 'FINISHED'" if finished_only else ""
    return find_runs(f"tags.mlflow.parentRunId = '{parent_run_id}'{status}")
