"""Run a study: every configuration on the same folds, as MLflow runs nested study > configuration > fold.

:func:`run_study` reads as its steps: check the backbones, prepare the data (the same pipeline as one training
run, up to the split), make and audit the folds, open the study's run, run each configuration on every fold,
compare, report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace as dc_replace
from pathlib import Path

import numpy as np

from ..evaluation.calls import CallRule
from ..splitting.audit import find_leaks
from ..splitting.prepare import PreparedData, grouped_data
from ..splitting.splits import assign_splits
from ..runtime import configure, say, show_progress
from ..tracking.runs import adopt_launched_run, child_runs, create_run, find_runs, finish_run, log_folder, log_metrics, \
    reopen_run, set_description, set_tags
from ..tracking.backbones import backbone_from
from ..tracking.store import configure_tracking, ui_hint
from ..refit import run_refit
from ..train import run_training
from .cross_dataset import TestSet, load_test_sets, score_on
from .protocol import Fold, leave_one_source_out, repeated_group_kfold, validation_seed, with_validation_share
from .report import short_name, write_report
from .few_shot import FewShotResult, run_few_shot
from .spec import FEW_SHOT, GROUP_METRICS, LOSO, METRICS, Configuration, StudySpec
from .statistics import compare, mean_ci

Scores = dict[str, dict[str, list[float]]]  # configuration -> metric -> per-fold test scores


@dataclass
class StudyResult:
    spec: StudySpec
    scores: Scores
    comparisons: list = field(default_factory=list)
    folds: list = field(default_factory=list)
    leaks: int = 0
    report: Path | None = None
    parent_run_id: str = ""
    seconds: float = 0.0
    refit_run_id: str = ""  # the study file asked for a refit of its best configuration


def check_backbones(spec: StudySpec) -> None:
    """Build every backbone once, so missing weights stop the study at once, not after hours."""
    for backbone, features in sorted({(c.config.backbone, c.config.features) for c in spec.configurations}):
        backbone_from(backbone, spec.base.pretrained, spec.base.weights, features)


def study_data(spec: StudySpec) -> PreparedData:
    """The data pipeline of a training run up to the split; masks are required if any configuration uses them."""
    masked = any(c.config.masks != "none" for c in spec.configurations)
    return grouped_data(spec.base, progress=show_progress(), mask_mode="cell" if masked else "none")


def study_folds(spec: StudySpec, data: PreparedData) -> list[Fold]:
    if spec.protocol == "cross_dataset":  # one hold-out split of the training data per seed
        return [Fold(r, 0, tuple(assign_splits(data.table.drop(columns=["split"], errors="ignore"),
                                               spec.base.val_fraction, spec.base.test_fraction, spec.base.seed + r,
                                               data.copies)["split"])) for r in range(spec.repeats)]
    if spec.protocol == LOSO:
        return leave_one_source_out(data.table, spec.hold_out or list(dict.fromkeys(data.table["source"])),
                                    spec.repeats, spec.val_fraction, spec.base.seed)
    if spec.protocol == "holdout":
        split = assign_splits(data.table.drop(columns=["split"], errors="ignore"), spec.base.val_fraction,
                              spec.base.test_fraction, spec.base.seed, data.copies)["split"]
        return [Fold(0, 0, tuple(split))]
    return repeated_group_kfold(data.table, spec.folds, spec.repeats, spec.val_fraction, spec.base.seed)


def audit_folds(data: PreparedData, folds: list[Fold]) -> int:
    return sum(len(find_leaks(data.table.assign(split=list(f.split)), copies=data.copies)) for f in folds)


def previous_study(spec: StudySpec, folds: list[Fold]) -> tuple[str | None, Scores]:
    """The newest parent run of this study and the per-fold scores of its configurations that finished with the
    same parameters and every fold (those are reused by ``--resume``)."""
    parents = find_runs(f"tags.`bloodml.task` = 'study' and params.study = '{spec.name}'",
                        order_by=["attributes.start_time DESC"])
    if not parents:
        return None, {}
    parent = parents[0].info.run_id
    done: Scores = {}
    expected = {c.name: c.config.to_params() for c in spec.configurations}
    for run in child_runs(parent):
        name = run.info.run_name
        if run.info.status != "FINISHED" or name not in expected:
            continue
        if any(run.data.params.get(k) != v for k, v in expected[name].items() if k != "run_name"):
            continue
        fold_runs = {r.data.tags.get("fold"): r for r in child_runs(run.info.run_id, finished_only=True)}
        prefix = f"cross_{Path(spec.tests[0]).stem}_" if spec.protocol == "cross_dataset" else "test_"
        if all(f.name in fold_runs and f"{prefix}{METRICS[0]}" in fold_runs[f.name].data.metrics for f in folds):
            done[name] = {m: [fold_runs[f.name].data.metrics.get(f"{prefix}{m}", float("nan")) for f in folds]
                          for m in METRICS + (GROUP_METRICS if spec.base.group_column and spec.protocol != "cross_dataset"
                                              else ())}
    return parent, done


def open_study_run(spec: StudySpec, folds: list[Fold], resume: bool) -> tuple[str, Scores]:
    """The study's parent run: the previous one (``resume``), the one `mlflow run` launched, or a new one.
    Returns (its ID, the configurations' scores that can be reused)."""
    previous, reused = previous_study(spec, folds) if resume else (None, {})
    if previous:
        reopen_run(previous)
        say(f"resuming study {spec.name} (run {previous}): {len(reused)} of {len(spec.configurations)} "
            f"configurations already complete")
        return previous, reused
    params = {"study": spec.name, "protocol": spec.protocol, "folds": spec.folds, "repeats": spec.repeats,
              "metric": spec.metric, "configurations": len(spec.configurations), "data": spec.base.data}
    tags = {"bloodml.task": "study"}
    parent = adopt_launched_run(tags, params, spec.base.experiment, f"study-{spec.name}") or create_run(
        spec.base.experiment, f"study-{spec.name}", None, tags, params)
    return parent, {}


def configuration_run(spec: StudySpec, configuration: Configuration, parent: str) -> str:
    """The configuration's run, a child of the study's, with its factors as tags and its parameters."""
    factor_tags = {f"factor.{k}": v for k, v in configuration.factors.items()}
    return create_run(spec.base.experiment, configuration.name, parent,
                      {"bloodml.task": "study-configuration", "bloodml.study": spec.name,
                       "masks_used": str(configuration.config.masks != "none").lower(), **factor_tags},
                      {**factor_tags, **configuration.config.to_params()})


def run_configuration(spec: StudySpec, configuration: Configuration, data: PreparedData, folds: list[Fold],
                      parent: str, tests: list[TestSet] | None = None) -> tuple[dict[str, list[float]], list[float]]:
    """One configuration on every fold, as a child run of the study with a grandchild per fold. Returns (per-fold
    test scores per metric, the folds' test/train size ratios)."""
    config_run = configuration_run(spec, configuration, parent)
    per_metric: dict[str, list[float]] = {m: [] for m in METRICS}
    ratios = []
    for fold in folds:
        scores, ratio, _ = run_fold(spec, configuration, data, fold, config_run, tests, first=fold is folds[0])
        for metric, value in scores.items():
            per_metric.setdefault(metric, []).append(value)
        ratios.append(ratio)
    aggregate_configuration(per_metric, config_run)
    return per_metric, ratios


def aggregate_configuration(per_metric: dict[str, list[float]], config_run: str) -> None:
    """Each metric's mean, sd and interval over folds, on the configuration's run, which then finishes."""
    aggregated = {}
    for metric, values in per_metric.items():
        mean, std, low, high = mean_ci(np.array(values))
        aggregated.update({f"test_{metric}_{k}": v for k, v in
                           (("mean", mean), ("std", std), ("ci_low", low), ("ci_high", high)) if np.isfinite(v)})
    log_metrics(aggregated, run_id=config_run)
    finish_run(config_run)


def run_fold(spec: StudySpec, configuration: Configuration, data: PreparedData, fold: Fold, config_run: str,
             tests: list[TestSet] | None = None, first: bool = True,
             extra_tags: dict | None = None) -> tuple[dict[str, float], float, str]:
    """One configuration on one fold, as a grandchild run of the study. Returns (its test scores by metric, its
    test/train size ratio, its run ID): one cell of the study, the same whichever process runs it."""
    factor_tags = {f"factor.{k}": v for k, v in configuration.factors.items()}
    per_metric: dict[str, float] = {}
    split = fold.split
    if "val_fraction" in configuration.factors:  # the validation share is the question: carved anew, same tests
        split = with_validation_share(fold, data.table, configuration.config.val_fraction,
                                      validation_seed(spec.base.seed, fold.repeat, fold.fold)).split
    fold_data = dc_replace(data, table=data.table.assign(split=list(split)))
    if "" in split:  # rows this fold leaves out (a held-out source's classes no training source has)
        fold_data = dc_replace(fold_data, table=fold_data.table.loc[fold_data.table["split"] != ""].reset_index(
            drop=True), copies=[])
    seed = configuration.config.seed + (fold.repeat if spec.protocol in ("cross_dataset", LOSO) else 0)
    config = dc_replace(configuration.config, run_name=f"{configuration.name}-{fold.name}", gradcam_samples=0,
                        seed=seed)
    if spec.protocol == "cv" and "val_fraction" not in configuration.factors:  # the fold run logs the share used
        config = dc_replace(config, val_fraction=spec.val_fraction)
    result = run_training(config, data=fold_data, parent_run_id=config_run, log_trained=False, plots=False,
                          tags={"bloodml.task": "study-fold", "bloodml.study": spec.name, "fold": fold.name,
                                **factor_tags, **(extra_tags or {})})
    scores = {m: result.metrics[f"test_{m}"] for m in METRICS}
    if tests:  # the compared scores are the first test dataset's; the in-domain ones are kept beside them
        per_metric["in_domain_macro_f1"] = scores["macro_f1"]
        crossed = {}
        for index, test in enumerate(tests):
            values, note = score_on(result.model, result.classes, test, result.shift_profile,
                                    CallRule.of_run(config, result.classes), config.adapt_bn, config.test_blur)
            if note and first:
                say(f"note: {note}")
            crossed.update({f"cross_{test.name}_{k}": v for k, v in values.items()})
            if index == 0:
                scores = {m: values[m] for m in METRICS}
                if "shift_far_share" in values:
                    per_metric["shift_far_share"] = values["shift_far_share"]
            else:
                per_metric[f"{test.name}_macro_f1"] = values["macro_f1"]
        log_metrics(crossed, run_id=result.run_id)
    for metric in METRICS:
        per_metric[metric] = scores[metric]
    if configuration.config.group_column and not tests:  # one call per patient: scored per patient
        for metric in GROUP_METRICS:
            per_metric[metric] = result.metrics.get(f"test_{metric}", float("nan"))
    return {**{m: per_metric[m] for m in METRICS}, **per_metric}, result.metrics["n_test"] / result.metrics["n_train"], \
        result.run_id


def compare_configurations(spec: StudySpec, scores: Scores, ratio: float) -> list:
    """Each question's paired comparisons (corrected resampled t-test for cross-validation)."""
    return [compare(q.name, a, b, spec.metric, np.array(scores[a][spec.metric]), np.array(scores[b][spec.metric]),
                    ratio if spec.protocol in ("cv", "cross_dataset", LOSO) else 0.0, short_name(a, q.factor), short_name(b, q.factor))
            for q in spec.questions for a, b in q.pairs]


def close_study_run(result: StudyResult, out: Path) -> None:
    log_folder(out, "report", result.parent_run_id)
    log_metrics({f"q{i}_mean_difference": c.mean_difference for i, c in enumerate(result.comparisons)},
                run_id=result.parent_run_id)
    set_tags({"verdicts": " | ".join(c.verdict() for c in result.comparisons)[:5000]}, result.parent_run_id)
    set_description((out / "study_report.md").read_text(), result.parent_run_id)
    finish_run(result.parent_run_id)


def study_setup(spec: StudySpec) -> tuple[str, PreparedData, list[Fold]]:
    """Threads and seeds, the tracking store, every backbone built once, the data and the folds."""
    configure(spec.base.threads, spec.base.seed)
    uri = configure_tracking()
    check_backbones(spec)
    data = study_data(spec)
    return uri, data, study_folds(spec, data)


def run_study(spec: StudySpec, out: Path, resume: bool = False) -> StudyResult | FewShotResult:
    if spec.protocol == FEW_SHOT:  # a source model per draw, adapted per k and selection: its own runner
        if resume:
            say("note: --resume does not apply to few_shot studies (their runs take seconds each); running it whole")
        check_backbones(spec)
        return run_few_shot(spec, out, study_data(spec))
    started = time.perf_counter()
    uri, data, folds = study_setup(spec)
    leaks = audit_folds(data, folds)
    tests = load_test_sets(spec.tests) if spec.tests else None
    say(f"study {spec.name}: {len(spec.configurations)} configurations x {len(folds)} folds; {len(data.table)} "
        f"images, classes {', '.join(data.classes)}; leakage audit of every fold: {leaks} leaks")
    parent, scores = open_study_run(spec, folds, resume)
    ratios: list[float] = []
    for index, configuration in enumerate(spec.configurations, start=1):
        if configuration.name in scores:
            continue
        scores[configuration.name], fold_ratios = run_configuration(spec, configuration, data, folds, parent, tests)
        ratios += fold_ratios
        say(f"configuration {index}/{len(spec.configurations)} {configuration.name}: test {spec.metric} "
            f"{np.mean(scores[configuration.name][spec.metric]):.3f} over {len(folds)} folds "
            f"({time.perf_counter() - started:.0f}s so far)")
    base = spec.base  # every configuration reused: the ratio its split implies
    fallback = (1.0 / (spec.folds - 1) if spec.folds > 1 else
                base.test_fraction / max(1.0 - base.val_fraction - base.test_fraction, 1e-9))
    ratio = float(np.mean(ratios)) if ratios else fallback
    scores = {c.name: scores[c.name] for c in spec.configurations}  # the study file's order
    result = StudyResult(spec, scores, compare_configurations(spec, scores, ratio), folds, leaks, None, parent,
                         time.perf_counter() - started)
    result.report = write_report(result, data.table, data.notes, out)
    close_study_run(result, out)
    for comparison in result.comparisons:
        say(f"{comparison.question}: {comparison.verdict()}")
    say(f"report: {result.report}; study wall time {result.seconds:.0f}s; see it: {ui_hint(uri)}")
    if spec.refit:  # the study chose; now the final model on all the data, carrying the estimate
        result.refit_run_id = run_refit(study=parent).run_id
        set_tags({"bloodml.refit_run": result.refit_run_id}, parent)
    return result
