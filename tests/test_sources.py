"""Several sources in one run: comma lists and data collections, label maps, the split by class and source, per-source
scores and datasets, leave-one-source-out folds, and their one-line errors."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bloodml.config import build_config
from bloodml.errors import BloodmlError
from bloodml.splitting.prepare import prepare, read_labelled
from bloodml.study.protocol import leave_one_source_out

from conftest import cell_image, tiny_overrides


def make_source(root: Path, labels: dict[str, int], offset: int, tint=(0, 0, 0), groups: bool = False) -> Path:
    """A folders-layout source (or, with ``groups``, a manifest with a patient column): ``labels`` maps a folder
    name to its image count; ``offset`` keeps its images distinct from every other source's."""
    rows = []
    for k, (label, n) in enumerate(labels.items()):
        (root / label).mkdir(parents=True)
        for i in range(n):
            colour_of = {"neutrophil": "alpha", "Neutrophils": "alpha", "lymphocyte": "beta", "monocyte": "gamma",
                         "platelet": "gamma"}.get(label, "alpha")
            image, _ = cell_image(colour_of, offset + 100 * k + i)
            image = np.clip(image.astype(int) + np.array(tint), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / label / f"c{i}.png")
            rows.append({"image": f"{label}/c{i}.png", "label": label, "patient": f"p{i % 4}"})
    if groups:
        pd.DataFrame(rows).to_csv(root / "cells.csv", index=False)
    return root


@pytest.fixture
def two_sources(tmp_path):
    a = make_source(tmp_path / "lab_a", {"neutrophil": 12, "lymphocyte": 12}, 0)
    b = make_source(tmp_path / "lab_b", {"neutrophil": 12, "lymphocyte": 12, "platelet": 6}, 5000, tint=(30, -20, 0))
    return a, b


def test_a_comma_list_keeps_each_image_source_and_splits_by_class_and_source(two_sources):
    a, b = two_sources
    data = prepare(build_config(None, tiny_overrides(f"{a},{b}")), progress=False)
    table = data.table
    assert set(table["source"]) == {"lab_a", "lab_b"}
    assert data.classes == ["lymphocyte", "neutrophil", "platelet"]  # a class missing from one source is fine
    counts = table.groupby(["source", "label", "split"]).size()
    for source, label in [("lab_a", "neutrophil"), ("lab_a", "lymphocyte"), ("lab_b", "neutrophil")]:
        assert all(counts.get((source, label, split), 0) >= 1 for split in ("train", "val", "test")), (source, label)


def test_a_collection_maps_and_drops_classes_caps_them_and_keeps_patients_apart(two_sources, tmp_path):
    a, b = two_sources
    make_source(tmp_path / "lab_c", {"Neutrophils": 8, "lymphocyte": 8}, 9000, groups=True)
    collection = tmp_path / "sources.yaml"
    collection.write_text(f"""sources:
  - {{name: a, data: {a}, max_per_class: 5}}
  - {{name: b, data: {b}, labels: {{platelet: drop}}}}
  - {{name: c, data: lab_c/cells.csv, group_column: patient, labels: {{Neutrophils: neutrophil}}}}
""")
    table, _, root, notes = read_labelled(build_config(None, tiny_overrides(collection)))
    assert table.groupby("source").size().to_dict() == {"a": 10, "b": 24, "c": 16}
    assert set(table["label"]) == {"neutrophil", "lymphocyte"}
    assert any("platelet (6) (label map: drop)" in note for note in notes)
    assert any("seeded sample of 5 images per class" in note for note in notes)
    # the same patient ID in another source is another patient
    assert set(table.loc[table["source"] == "c", "group"].dropna()) == {f"c:p{i}" for i in range(4)}
    assert root == tmp_path.resolve()
    again, *_ = read_labelled(build_config(None, tiny_overrides(collection)))
    assert list(again["path"]) == list(table["path"])  # the capped sample is the same every run


@pytest.mark.parametrize("case, expected", [
    ("clash", "spell one class two ways ('neutrophil' and 'Neutrophils'); map one to the other"),
    ("unknown", "the label map names 'eosinophil', which is not a class of this source"),
    ("empty", "source b has no usable images left"),
])
def test_bad_collections_get_one_line(two_sources, tmp_path, case, expected):
    a, b = two_sources
    make_source(tmp_path / "lab_c", {"Neutrophils": 6, "lymphocyte": 6}, 9000)
    entries = {"clash": f"  - {{name: a, data: {a}}}\n  - {{name: c, data: {tmp_path / 'lab_c'}}}\n",
               "unknown": f"  - {{name: a, data: {a}, labels: {{eosinophil: drop}}}}\n  - {{name: b, data: {b}}}\n",
               "empty": f"  - {{name: a, data: {a}}}\n  - {{name: b, data: {b}, labels: {{neutrophil: drop, "
                        f"lymphocyte: drop, platelet: drop}}}}\n"}
    collection = tmp_path / f"{case}.yaml"
    collection.write_text("sources:\n" + entries[case])
    with pytest.raises(BloodmlError) as error:
        read_labelled(build_config(None, tiny_overrides(collection)))
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert str(collection) in str(error.value)


def test_leave_one_source_out_tests_each_source_on_the_others_only():
    table = pd.DataFrame({
        "label": ["n", "l"] * 10 + ["n", "l", "m", "m"] * 3,
        "source": ["a"] * 20 + ["b"] * 12,
        "group": [f"g{i}" for i in range(32)]})
    folds = leave_one_source_out(table, ["a", "b"], repeats=2, val_fraction=0.2, seed=1)
    assert [f.name for f in folds] == ["r0-a", "r0-b", "r1-a", "r1-b"]
    for fold in folds:
        split = pd.Series(fold.split)
        held = table["source"] == fold.held_out
        assert set(split[~held]) == {"train", "val"}
        # b's class 'm' is in no other source: a model trained on a cannot call it, so it is left out
        expected = set(table.loc[held & table["label"].isin(table.loc[~held, "label"])].index)
        assert set(split[split == "test"].index) == expected
    assert folds[0].split != folds[2].split  # each seed carves its own validation split
    with pytest.raises(BloodmlError, match="needs two or more sources"):
        leave_one_source_out(table, ["c"], 1, 0.2, 1)


def test_a_run_on_two_sources_scores_and_logs_each_source(two_sources):
    from bloodml.train import run_training

    a, b = two_sources
    result = run_training(build_config(None, tiny_overrides(f"{a},{b}", epochs=1, gradcam_samples=0)), plots=True,
                          log_trained=False)
    for source in ("lab_a", "lab_b"):
        assert 0.0 <= result.metrics[f"test_source_{source}_macro_f1"] <= 1.0
        assert result.metrics[f"test_source_{source}_n"] >= 1
    assert result.metrics["test_source_lab_a_n"] + result.metrics["test_source_lab_b_n"] == result.metrics["n_test"]
    run = mlflow.get_run(result.run_id)
    datasets = {(d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"])
                for d in run.inputs.dataset_inputs}
    assert datasets == {(s, split) for s in ("lab_a", "lab_b") for split in ("train", "val", "test")}
    assert "| lab_a |" in run.data.tags["mlflow.note.content"]


LOSO_STUDY = """name: tiny_loso
settings: {{data: "{data}", backbone: {backbone}, pretrained: false, image_size: 32, epochs: 1, aug_views: 1,
           min_class_count: 2, near_duplicate_distance: -1, gradcam_samples: 0, bootstrap: 100, experiment: loso}}
protocol: {{type: leave_one_source_out, repeats: 2, val_fraction: 0.2}}
factors:
  stain_norm: [none, grey_world]
"""


def test_a_leave_one_source_out_study_reports_each_held_out_source(tmp_path):
    from bloodml.study.runner import run_study
    from bloodml.study.spec import load_study

    from conftest import TINY_BACKBONE

    sources = [make_source(tmp_path / name, {"neutrophil": 8, "lymphocyte": 8}, offset, tint)
               for name, offset, tint in (("lab_a", 0, (0, 0, 0)), ("lab_b", 3000, (25, -15, 0)),
                                          ("lab_c", 6000, (-20, 0, 20)))]
    path = tmp_path / "study.yaml"
    path.write_text(LOSO_STUDY.format(data=",".join(map(str, sources)), backbone=TINY_BACKBONE))
    result = run_study(load_study(path), tmp_path / "report")
    assert [f.name for f in result.folds] == [f"r{r}-lab_{s}" for r in (0, 1) for s in "abc"]
    assert len(result.comparisons) == 1 and result.comparisons[0].n_folds == 6
    per_source = pd.read_csv(tmp_path / "report" / "per_source.csv")
    assert set(per_source["held_out"]) == {"lab_a", "lab_b", "lab_c"} and set(per_source["seeds"]) == {2}
    report = result.report.read_text()
    assert "leave one source out" in report and "| configuration | lab_a | lab_b | lab_c | mean over sources |" in report
    folds = [r for r in mlflow.search_runs(experiment_names=["loso"], output_format="list")
             if r.data.tags.get("bloodml.task") == "study-fold"]
    for run in folds:  # each fold tested on its held-out source's 16 images, trained on the other two
        held = run.data.tags["fold"].split("-", 1)[1]
        assert run.data.metrics["n_test"] == 16 and run.data.metrics["n_train"] + run.data.metrics["n_val"] == 32
        assert {d.dataset.name for d in run.inputs.dataset_inputs
                if {t.key: t.value for t in d.tags}["mlflow.data.context"] == "test"} == {held}
