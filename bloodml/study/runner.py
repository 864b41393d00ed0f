"""Run a study: every configuration on the same folds, as MLflow runs nested study > configuration > fold."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace as dc_replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param

from ..data.audit import find_leaks
from ..data.prepare import PreparedData, add_hashes, read_labelled, require_masks
from ..data.splits import duplicate_groups
from ..models.registry import create_backbone
from ..runtime import configure, say, show_progress
from ..tracking.store import configure_tracking, ui_hint
from ..train import run_training
from .protocol import Fold, repeated_group_kfold
from .report import short_name, write_report
from .spec import METRICS, StudySpec
from .statistics import compare, mean_ci


@dataclass
class StudyResult:
    spec: StudySpec
    scores: dict[str, dict[str, list[float]]]  # configuration -> metric -> per-fold test scores
    comparisons: list = field(default_factory=list)
    leaks: int = 0
    report: Path | None = None
    parent_run_id: str = ""
    seconds: float = 0.0


def study_folds(spec: StudySpec, table: pd.DataFrame) -> list[Fold]:
    if spec.protocol == "holdout":
        from ..data.splits import assign_splits

        split = assign_splits(table.drop(columns=["split"], errors="ignore"), spec.base.val_fraction,
                              spec.base.test_fraction, spec.base.seed, spec.base.near_duplicate_distance)["split"]
        return [Fold(0, 0, tuple(split))]
    return repeated_group_kfold(table, spec.folds, spec.repeats, spec.val_fraction, spec.base.seed)


def _client_run(client, experiment_id: str, name: str, parent: str | None, tags: dict, params: dict) -> str:
    all_tags = {**tags, **({"mlflow.parentRunId": parent} if parent else {})}
    run = client.create_run(experiment_id, run_name=name, tags=all_tags)
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[start:start + 100])
    return run.info.run_id


def _previous(client, spec: StudySpec, folds: list[Fold]) -> tuple[str | None, dict[str, dict[str, list[float]]]]:
    """The newest parent run of this study and the per-fold scores of its configurations that finished with the
    same parameters and every fold (those are reused by ``--resume``)."""
    parents = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                 filter_string=f"tags.`bloodml.task` = 'study' and params.study = '{spec.name}'",
                                 order_by=["attributes.start_time DESC"])
    if not parents:
        return None, {}
    parent = parents[0].info.run_id
    done: dict[str, dict[str, list[float]]] = {}
    expected = {c.name: c.config.to_params() for c in spec.configurations}
    children = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    for run in children:
        name = run.info.run_name
        if run.info.status != "FINISHED" or name not in expected:
            continue
        if any(run.data.params.get(k) != v for k, v in expected[name].items() if k != "run_name"):
            continue
        fold_runs = {r.data.tags.get("fold"): r for r in mlflow.search_runs(
            search_all_experiments=True, output_format="list",
            filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}' and attributes.status = 'FINISHED'")}
        if all(f.name in fold_runs for f in folds):
            done[name] = {m: [fold_runs[f.name].data.metrics[f"test_{m}"] for f in folds] for m in METRICS}
    return parent, done


def run_study(spec: StudySpec, out: Path, resume: bool = False) -> StudyResult:
    started = time.perf_counter()
    configure(spec.base.threads, spec.base.seed)
    uri = configure_tracking()
    for backbone in sorted({c.config.backbone for c in spec.configurations}):  # missing weights: stop at once
        create_backbone(backbone, spec.base.pretrained, spec.base.weights)
    table, fmt, root, notes = read_labelled(spec.base)
    if any(c.config.masks != "none" for c in spec.configurations):
        require_masks(table, "cell")
    table = add_hashes(table, progress=show_progress())
    table["group"] = duplicate_groups(table, spec.base.near_duplicate_distance)
    folds = study_folds(spec, table)
    leaks = sum(len(find_leaks(table.assign(split=list(f.split)), spec.base.near_duplicate_distance)) for f in folds)
    classes = sorted(table["label"].unique())
    say(f"study {spec.name}: {len(spec.configurations)} configurations x {len(folds)} folds; {len(table)} images, "
        f"classes {', '.join(classes)}; leakage audit of every fold: {leaks} leaks")

    mlflow.set_experiment(spec.base.experiment)
    client = mlflow.MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(spec.base.experiment).experiment_id
    previous, reused = _previous(client, spec, folds) if resume else (None, {})
    study_params = {"study": spec.name, "protocol": spec.protocol, "folds": spec.folds, "repeats": spec.repeats,
                    "metric": spec.metric, "configurations": len(spec.configurations), "data": spec.base.data}
    if previous:  # --resume: continue under the same parent, reusing the configurations that finished
        parent = previous
        client.update_run(parent, status="RUNNING")
        say(f"resuming study {spec.name} (run {parent}): {len(reused)} of {len(spec.configurations)} "
            f"configurations already complete")
    elif os.environ.get("MLFLOW_RUN_ID"):  # launched by `mlflow run -e study`: that run is the study's parent
        parent = os.environ["MLFLOW_RUN_ID"]
        experiment_id = client.get_run(parent).info.experiment_id
        client.set_tag(parent, "bloodml.task", "study")
        client.log_batch(parent, params=[Param(k, str(v)) for k, v in study_params.items()])
    else:
        parent = _client_run(client, experiment_id, f"study-{spec.name}", None, {"bloodml.task": "study"},
                             study_params)
    scores: dict[str, dict[str, list[float]]] = {}
    ratios: list[float] = []
    for index, configuration in enumerate(spec.configurations, start=1):
        if configuration.name in reused:
            scores[configuration.name] = reused[configuration.name]
            continue
        factor_params = {f"factor.{k}": v for k, v in configuration.factors.items()}
        config_run = _client_run(client, experiment_id, configuration.name, parent,
                                 {"bloodml.task": "study-configuration", "bloodml.study": spec.name,
                                  "masks_used": str(configuration.config.masks != "none").lower(),
                                  **{f"factor.{k}": v for k, v in configuration.factors.items()}},
                                 {**factor_params, **configuration.config.to_params()})
        per_metric: dict[str, list[float]] = {m: [] for m in METRICS}
        for fold in folds:
            data = PreparedData(table.assign(split=list(fold.split)), classes, Path(root), fmt)
            config = dc_replace(configuration.config, run_name=f"{configuration.name}-{fold.name}", gradcam_samples=0)
            result = run_training(config, data=data, parent_run_id=config_run, log_trained_model=False, plots=False,
                                  tags={"bloodml.task": "study-fold", "bloodml.study": spec.name,
                                        "fold": fold.name, **{f"factor.{k}": v for k, v in configuration.factors.items()}})
            for metric in METRICS:
                per_metric[metric].append(result.metrics[f"test_{metric}"])
            ratios.append(result.metrics["n_test"] / result.metrics["n_train"])
        scores[configuration.name] = per_metric
        stamp = int(time.time() * 1000)
        aggregated = []
        for metric, values in per_metric.items():
            mean, std, low, high = mean_ci(np.array(values))
            aggregated += [Metric(f"test_{metric}_{k}", v, stamp, 0) for k, v in
                           (("mean", mean), ("std", std), ("ci_low", low), ("ci_high", high)) if np.isfinite(v)]
        client.log_batch(config_run, metrics=aggregated)
        client.set_terminated(config_run, "FINISHED")
        mean = np.mean(per_metric[spec.metric])
        say(f"configuration {index}/{len(spec.configurations)} {configuration.name}: test {spec.metric} "
            f"{mean:.3f} over {len(folds)} folds ({time.perf_counter() - started:.0f}s so far)")

    ratio = float(np.mean(ratios))
    comparisons = [compare(q.name, a, b, spec.metric, np.array(scores[a][spec.metric]),
                           np.array(scores[b][spec.metric]), ratio if spec.protocol == "cv" else 0.0,
                           short_name(a, q.factor), short_name(b, q.factor))
                   for q in spec.questions for a, b in q.pairs]
    result = StudyResult(spec, scores, comparisons, leaks, None, parent, time.perf_counter() - started)
    result.report = write_report(result, table, notes, out)
    client.log_artifacts(parent, str(out), artifact_path="report")
    for i, comparison in enumerate(comparisons):
        client.log_metric(parent, f"q{i}_mean_difference", comparison.mean_difference)
    client.set_tag(parent, "verdicts", " | ".join(c.verdict() for c in comparisons)[:5000])
    client.set_terminated(parent, "FINISHED")
    for comparison in comparisons:
        say(f"{comparison.question}: {comparison.verdict()}")
    say(f"report: {result.report}; study wall time {result.seconds:.0f}s; see it: {ui_hint(uri)}")
    return result
