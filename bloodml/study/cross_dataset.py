"""The cross-dataset protocol: a model trained on one dataset (its own hold-out split, one per seed) is scored on
other datasets' images (another instrument, lab or stain), in memory, as its logged model would score them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import RunConfig, build_config
from ..splitting.prepare import read_labelled
from ..errors import BloodmlError
from ..predict import InMemoryModel, adapted_model, model_probabilities
from ..evaluation.domain_shift import ShiftProfile
from ..evaluation.calls import CallRule
from ..evaluation.scoring import point_scores


@dataclass(frozen=True)
class TestSet:
    name: str
    table: pd.DataFrame  # path, label, mask_path
    config: RunConfig


def load_test_sets(paths: list[str], overrides: dict | None = None) -> list[TestSet]:
    """Each test dataset's labelled images (its own run configuration: reader, class names, mask codes)."""
    sets = []
    for path in paths:
        config = build_config(path, overrides or {})
        table, _, _, _ = read_labelled(config)
        sets.append(TestSet(Path(path).stem, table, config))
    return sets


def score_on(model, classes: list[str], test: TestSet, profile: ShiftProfile | None, rule: CallRule,
             adapt_bn: bool = False, blur: float = 0.0) -> tuple[dict[str, float], str]:
    """Scores of ``model`` on one test dataset (its images without a mask left out when the model needs one and
    has no segmenter), and a note saying what was left out. ``adapt_bn``: batch-norm statistics re-estimated on
    the test images first (AdaBN); ``blur``: the test images blurred (test_blur)."""
    spec = model.spec
    table = test.table
    unknown = sorted(set(table["label"]) - set(classes))
    if unknown:
        raise BloodmlError(f"test data {test.config.data}: classes {', '.join(unknown)} are not the model's "
                           f"({', '.join(classes)}); rename them (class_names) or drop them (min_class_count).")
    note = ""
    if spec.masked and spec.masks_from == "expert":
        has = table["mask_path"].map(lambda m: isinstance(m, str) and bool(m))
        if (~has).any():
            note = f"{test.name}: {int((~has).sum())} image(s) without a mask left out of masks={spec.mask_mode}"
            table = table.loc[has]
    paths, mask_paths = list(table["path"]), list(table["mask_path"])
    scorer = (adapted_model(model, spec, paths, mask_paths, mask_codes=test.config.mask_codes, blur=blur)
              if adapt_bn else InMemoryModel(model))
    points: list = []
    probabilities = model_probabilities(scorer, spec, paths, mask_paths, mask_codes=test.config.mask_codes,
                                        domain_points=points, blur=blur)
    truth = np.array([classes.index(label) for label in table["label"]])
    scores = point_scores(truth, probabilities, rule)
    if profile is not None and points:
        scores.update(profile.report(np.concatenate(points)))
    return scores, note
