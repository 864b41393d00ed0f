"""The few_shot protocol: how many labelled cells of a new instrument does a model need, and which ones?

For each draw (a seed): a source model is trained on the source data (its own seeded split), and the target's
cells are halved per class (group-aware): the *pool* the labelled cells come from and the *test* part every
score of that draw is measured on. So a class never gives more than half its cells to training, and within a
draw every k and every selection is scored on the same cells (paired). For each k (cells per class, capped at
what the class has in the pool) and each selection (random: k per class drawn at random; suggested: the same
number of cells in the order ``bloodml suggest`` gives, chosen without their labels), each configuration adapts
the source model's head (``adapt_strategy``) and is scored on the test part; k = 0 is the source model as it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace as dc_replace

import numpy as np
import pandas as pd
import torch

from ..cache.keys import image_keys
from ..config import RunConfig, build_config, replace, section
from ..errors import BloodmlError
from ..evaluation.calls import CallRule
from ..evaluation.scoring import point_scores
from ..inputs.dataset import ImageSet, preload
from ..models.classifier import tta_views
from ..runtime import configure, say, show_progress
from ..segmentation.source import segmenter_for
from ..splitting.prepare import PreparedData, grouped_data
from ..splitting.selection import labelling_pool, per_class_budget, random_per_class, suggest_order
from ..splitting.splits import assign_splits
from ..tracking.runs import adopt_launched_run, create_run, finish_run, log_folder, log_metrics, set_description, \
    set_tags
from ..tracking.store import configure_tracking, ui_hint
from ..training.adapt import AdaptSettings, adapt_head
from ..training.loop import TrainSettings
from ..train import augmentation, run_training
from .spec import Configuration, StudySpec
from .few_shot_report import FewShotResult, write_few_shot_report


@dataclass
class SourceModel:
    """One draw's source model and what adapting it needs: its training views' features, its validation
    features, and every target cell's features (plain, for scoring and suggesting; each augmented view, for
    training on the picked ones)."""
    config: RunConfig
    run_id: str
    head: torch.nn.Module
    classes: list[str]
    source_views: torch.Tensor
    source_labels: torch.Tensor
    val_features: torch.Tensor
    val_labels: torch.Tensor
    target_plain: list[torch.Tensor]  # one (N, D) per test-time view (one without TTA)
    target_views: torch.Tensor  # (views, N, D)
    target_labels: torch.Tensor
    n_train: int


def target_data(spec: StudySpec, classes: list[str], mask_mode: str) -> tuple[PreparedData, RunConfig]:
    """The new instrument's labelled cells (its own run configuration: reader, class names, mask codes), copies
    grouped, classes the source lacks left out with a note."""
    config = build_config(spec.target, {})
    data = grouped_data(config, progress=show_progress(), mask_mode=mask_mode)
    unknown = sorted(set(data.table["label"]) - set(classes))
    if unknown:
        say(f"note: {spec.target}: class(es) {', '.join(unknown)} are not the source's ({', '.join(classes)}); their "
            f"{int(data.table['label'].isin(unknown).sum())} cells are left out")
    table = data.table.loc[data.table["label"].isin(classes)].reset_index(drop=True)
    if table.empty:
        raise BloodmlError(f"{spec.target}: none of its classes is one of the source's ({', '.join(classes)}); map "
                           f"them with class_names.")
    return dc_replace(data, table=table, copies=[]), config


# Parameters that change how a source model is adapted (and its cells chosen), not the source model itself.
ADAPTING_ONLY = ("run_name", "suggest_uncertainty", *AdaptSettings.__dataclass_fields__)


def source_key(configuration: Configuration) -> str:
    """Configurations that differ only in how they adapt share one source model per draw."""
    params = configuration.config.to_params()
    return "|".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ADAPTING_ONLY)


def train_source(config: RunConfig, source: PreparedData, draw: int, parent: str, study: str) -> object:
    """The draw's source model: the source's own seeded split, a tracked run under the study."""
    seed = config.seed + draw
    table = assign_splits(source.table.drop(columns=["split"], errors="ignore"), config.val_fraction,
                          config.test_fraction, seed, source.copies)
    return run_training(replace(config, seed=seed, run_name=f"source-d{draw}", gradcam_samples=0),
                        data=dc_replace(source, table=table), parent_run_id=parent, log_trained=False, plots=False,
                        tags={"bloodml.task": "study-fold", "bloodml.study": study, "fold": f"source-d{draw}"})


def source_model(config: RunConfig, trained, target: PreparedData, target_config: RunConfig) -> SourceModel:
    """Everything adapting needs from one trained source model, through its feature cache."""
    features, sets, model = trained.features, trained.sets, trained.model
    if features is None:
        raise BloodmlError("few_shot adapts the head on frozen-backbone features: use finetune=none with "
                           "feature_cache on.")
    spec = dc_replace(model.spec, mask_codes=target_config.mask_codes or model.spec.mask_codes)
    images = preload(target.table, trained.classes, spec, show_progress(), segmenter_for(spec) if spec.segmented
                     else None)
    transform = augmentation(config)
    views = config.aug_views if transform is not None else 1

    def every_view(part: ImageSet, name: str) -> torch.Tensor:
        keys = image_keys(part.images, part.regions)
        return torch.stack([features.of(part.images, part.regions, transform, v, keys, desc=f"{name} view {v + 1}")
                            for v in range(views)])
    plain_views = (list(zip(tta_views(images.images), tta_views(images.regions))) if model.tta else
                   [(images.images, images.regions)])
    plain = [features.of(i.contiguous(), r.contiguous(), desc="target") for i, r in plain_views]
    return SourceModel(config, trained.run_id, model.head.cpu().eval(), trained.classes, every_view(sets["train"], "source"),
                       sets["train"].labels, features.of(sets["val"].images, sets["val"].regions, desc="val"),
                       sets["val"].labels, plain, every_view(images, "target"), images.labels, len(sets["train"]))


@torch.no_grad()
def probabilities(head: torch.nn.Module, plain: list[torch.Tensor], rows: np.ndarray) -> np.ndarray:
    """The head's class probabilities of target rows (the mean over test-time views, as the model averages)."""
    head = head.eval()
    index = torch.as_tensor(rows)
    return torch.stack([torch.softmax(head(p[index]).float(), 1) for p in plain]).mean(0).numpy()


def picks_of(selection: str, k: int, source: SourceModel, table: pd.DataFrame, pool: np.ndarray, seed: int,
             uncertainty_weight: float) -> list[int]:
    """Target rows to label: k per class at random, or as many chosen by suggest's order (labels unseen)."""
    if selection == "random":
        return random_per_class(table, pool, k, seed)
    budget = sum(per_class_budget(table.iloc[pool].drop_duplicates("group")["label"], k).values())
    order = suggest_order(source.target_plain[0][torch.as_tensor(pool)].numpy(),
                          probabilities(source.head, source.target_plain, pool), table["group"].to_numpy()[pool],
                          budget, uncertainty_weight)
    return sorted(int(pool[i]) for i in order)


def scores_of(head, source: SourceModel, test: np.ndarray, rule: CallRule) -> dict[str, float]:
    truth = source.target_labels[torch.as_tensor(test)].numpy()
    return point_scores(truth, probabilities(head, source.target_plain, test), rule)


def adapted(configuration: Configuration, source: SourceModel, picks: list[int]):
    config = configuration.config
    torch.manual_seed(config.seed)
    index = torch.as_tensor(picks)
    head, _ = adapt_head(source.head, section(config, AdaptSettings), section(config, TrainSettings, seed=config.seed),
                         source.target_views[:, index], source.target_labels[index], source.source_views,
                         source.source_labels, source.val_features, source.val_labels, len(source.classes))
    return head


def fold_run(spec: StudySpec, configuration: Configuration, parent: str, draw: int, k: int, selection: str,
             values: dict[str, float], picked: pd.Series) -> None:
    name = f"d{draw}-k{k}-{selection}"
    run = create_run(spec.base.experiment, f"{configuration.name}-{name}", parent,
                     {"bloodml.task": "study-fold", "bloodml.study": spec.name, "fold": name, "draw": str(draw),
                      "k": str(k), "selection": selection,
                      "picked": ", ".join(f"{label} {n}" for label, n in picked.items())})
    log_metrics({f"test_{m}": v for m, v in values.items()}, run_id=run)
    finish_run(run)


def open_parent(spec: StudySpec) -> str:
    params = {"study": spec.name, "protocol": spec.protocol, "repeats": spec.repeats, "metric": spec.metric,
              "configurations": len(spec.configurations), "data": spec.base.data, "target": spec.target,
              "k": ",".join(map(str, spec.shots)), "selection": ",".join(spec.selections)}
    tags = {"bloodml.task": "study"}
    return adopt_launched_run(tags, params, spec.base.experiment, f"study-{spec.name}") or create_run(
        spec.base.experiment, f"study-{spec.name}", None, tags, params)


def run_few_shot(spec: StudySpec, out, source_data: PreparedData) -> FewShotResult:
    started = time.perf_counter()
    configure(spec.base.threads, spec.base.seed)
    uri = configure_tracking()
    masked = any(c.config.masks != "none" for c in spec.configurations)
    target, target_config = target_data(spec, source_data.classes, spec.base.masks if masked else "none")
    say(f"study {spec.name} (few_shot): source {spec.base.data} ({len(source_data.table)} images), target "
        f"{spec.target} ({len(target.table)} cells: " + ", ".join(
            f"{n} {label}" for label, n in target.table["label"].value_counts().sort_index().items())
        + f"); k = {', '.join(map(str, spec.shots))} per class, {spec.repeats} draws, {' and '.join(spec.selections)}"
        f" selection, {len(spec.configurations)} configuration(s)")
    parent = open_parent(spec)
    config_runs = {c.name: create_run(spec.base.experiment, c.name, parent,
                                      {"bloodml.task": "study-configuration", "bloodml.study": spec.name,
                                       **{f"factor.{k}": v for k, v in c.factors.items()}},
                                      {**{f"factor.{k}": v for k, v in c.factors.items()}, **c.config.to_params()})
                   for c in spec.configurations}
    rows, pools = [], []
    groups: dict[str, list[Configuration]] = {}
    for configuration in spec.configurations:
        groups.setdefault(source_key(configuration), []).append(configuration)
    for draw in range(spec.repeats):
        seed = spec.base.seed + draw
        pool, test = labelling_pool(target.table, seed)
        pools.append({"draw": draw, "pool": len(pool), "test": len(test), **{
            f"pool_{label}": int(n) for label, n in target.table.iloc[pool]["label"].value_counts().items()}})
        for members in groups.values():
            trained = train_source(members[0].config, source_data, draw, parent, spec.name)
            source = source_model(members[0].config, trained, target, target_config)
            rule = CallRule.of_run(members[0].config, source.classes)
            base = scores_of(source.head, source, test, rule)
            for configuration in members:
                rows.append({"configuration": configuration.name, "draw": draw, "k": 0, "selection": "none",
                             "n_labelled": 0, "n_test": len(test), "n_train": source.n_train, **base})
                fold_run(spec, configuration, config_runs[configuration.name], draw, 0, "none", base, pd.Series())
            for k in [k for k in spec.shots if k > 0]:
                for selection in spec.selections:
                    for configuration in members:
                        picks = picks_of(selection, k, source, target.table, pool, seed * 1000 + k,
                                         configuration.config.suggest_uncertainty)
                        picked = target.table.iloc[picks]["label"].value_counts().sort_index()
                        values = scores_of(adapted(configuration, source, picks), source, test, rule)
                        rows.append({"configuration": configuration.name, "draw": draw, "k": k,
                                     "selection": selection, "n_labelled": len(picks), "n_test": len(test),
                                     "n_train": source.n_train + len(picks), **values,
                                     "picked": ", ".join(f"{label} {n}" for label, n in picked.items())})
                        fold_run(spec, configuration, config_runs[configuration.name], draw, k, selection, values,
                                 picked)
        say(f"draw {draw + 1}/{spec.repeats}: " + "; ".join(
            f"k={row['k']} {row['selection']} {row['macro_f1']:.3f}" for row in rows
            if row["draw"] == draw and row["configuration"] == spec.configurations[0].name)
            + f" ({time.perf_counter() - started:.0f}s so far)")
    table = pd.DataFrame(rows)
    result = FewShotResult(spec, table, pd.DataFrame(pools), parent, time.perf_counter() - started)
    result.report = write_few_shot_report(result, target.table, out)
    for name, run in config_runs.items():
        means = table.loc[table["configuration"] == name].groupby(["k", "selection"])[spec.metric].mean()
        log_metrics({f"test_{spec.metric}_k{k}_{s}_mean": v for (k, s), v in means.items()}, run_id=run)
        finish_run(run)
    log_folder(out, "report", parent)
    set_tags({"verdicts": " | ".join(c.verdict() for c in result.comparisons)[:5000]}, parent)
    set_description(result.report.read_text(), parent)
    finish_run(parent)
    for comparison in result.comparisons:
        say(f"{comparison.question}: {comparison.verdict()}")
    say(f"report: {result.report}; study wall time {result.seconds:.0f}s; see it: {ui_hint(uri)}")
    return result

