"""Issue 7: the study protocol, the paired test, and a small real study end to end."""

import mlflow
import numpy as np
import pandas as pd
import pytest

from bloodml.errors import BloodmlError
from bloodml.study.protocol import repeated_group_kfold, validation_seed, with_validation_share
from bloodml.study.runner import run_study
from bloodml.study.spec import load_study
from bloodml.study.statistics import compare, corrected_resampled_t
from conftest import REPO, TINY_BACKBONE


def test_corrected_resampled_t_test_by_hand():
    d = np.array([0.1, 0.2, 0.0, 0.1, 0.15])
    # mean 0.11; sample variance 0.022 / 4 = 0.0055; se = sqrt((1/5 + 0.25) * 0.0055) = 0.0497494
    mean, low, high, t, p = corrected_resampled_t(d, test_train_ratio=0.25)
    assert mean == pytest.approx(0.11)
    assert t == pytest.approx(0.11 / 0.0497494, rel=1e-5)  # 2.2111
    half = 2.776445 * 0.0497494  # t(0.975, df=4) x se
    assert (low, high) == pytest.approx((0.11 - half, 0.11 + half), rel=1e-5)
    assert p == pytest.approx(0.0915, abs=5e-4)
    naive = corrected_resampled_t(d, test_train_ratio=0.0)  # the uncorrected test is narrower
    assert naive[2] - naive[1] < high - low
    comparison = compare("q", "A", "B", "macro_f1", np.zeros(5), d, 0.25)
    assert "no detectable difference" in comparison.verdict()
    clear = compare("q", "A", "B", "macro_f1", np.zeros(5), d + 0.3, 0.25)
    assert clear.verdict().startswith("B beats A in macro_f1 by 0.410 (95% CI +0.272 to +0.548")
    reverse = compare("q", "A", "B", "macro_f1", d + 0.3, np.zeros(5), 0.25)
    assert reverse.verdict().startswith("A beats B in macro_f1 by 0.410 (95% CI +0.272 to +0.548")


def _table(n=60, seed=0):
    labels = np.array(["a"] * 30 + ["b"] * 20 + ["c"] * 10)
    groups = [f"g{i}" for i in range(n)]
    groups[1] = groups[0]  # a pair of copies
    return pd.DataFrame({"label": labels, "group": groups})


def test_repeated_group_kfold_properties():
    table = _table()
    folds = repeated_group_kfold(table, folds=5, repeats=3, val_fraction=0.15, seed=1)
    assert len(folds) == 15
    assert [f.split for f in folds] == [f.split for f in repeated_group_kfold(table, 5, 3, 0.15, 1)]
    for repeat in range(3):
        tested = np.zeros(len(table), dtype=int)
        for fold in [f for f in folds if f.repeat == repeat]:
            split = np.array(fold.split)
            tested += split == "test"
            assert split[0] == split[1]  # copies together
            for part in ("train", "val", "test"):
                assert set(table.loc[split == part, "label"]) == {"a", "b", "c"}
        assert (tested == 1).all()  # every image tested exactly once per repeat
    with pytest.raises(BloodmlError, match="fewer than folds=20"):
        repeated_group_kfold(table, folds=20, repeats=1, val_fraction=0.15, seed=0)


def test_validation_share_is_carved_anew_inside_the_fold_and_the_test_part_stays():
    table = _table()
    folds = repeated_group_kfold(table, folds=3, repeats=2, val_fraction=0.15, seed=4)
    for fold in folds:
        seed = validation_seed(4, fold.repeat, fold.fold)
        assert with_validation_share(fold, table, 0.15, seed) == fold  # the protocol's own share: its own split
        wide = with_validation_share(fold, table, 0.4, seed)
        before, after = np.array(fold.split), np.array(wide.split)
        assert ((before == "test") == (after == "test")).all()  # the same images tested: still paired
        assert (after == "val").sum() > (before == "val").sum() and (after == "train").sum() < (before == "train").sum()
        pool = (before != "test").sum()
        assert abs((after == "val").sum() / pool - 0.4) < 0.1
        for group in table["group"].unique():  # copies stay on one side
            assert len(set(after[(table["group"] == group).to_numpy()])) == 1


STUDY_VAL = """name: tiny_val
settings: {{data: {data}, backbone: {backbone}, pretrained: false, image_size: 32, epochs: 1, aug_views: 1,
           min_class_count: 2, near_duplicate_distance: -1, gradcam_samples: 0, bootstrap: 100, experiment: tiny_val}}
protocol: {{type: cv, folds: 3, repeats: 1, val_fraction: 0.15}}
factors:
  val_fraction: [0.15, 0.45]
"""


def test_a_study_can_ask_what_the_validation_split_costs(make_wbc, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY_VAL.format(data=make_wbc(per_class=9), backbone=TINY_BACKBONE))
    result = run_study(load_study(path), tmp_path / "report")
    assert len(result.comparisons) == 1
    assert "where it is a factor" in result.report.read_text()
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["tiny_val"], output_format="list")
    splits = {}
    for run in [r for r in runs if r.data.tags.get("bloodml.task") == "study-fold"]:
        table = pd.read_csv(client.download_artifacts(run.info.run_id, "split_manifest.csv",
                                                      str(tmp_path / run.info.run_id))).sort_values("path")
        splits[(run.data.tags["fold"], run.data.params["val_fraction"])] = table["split"].to_numpy()
    assert len(splits) == 6
    for fold in ("r0f0", "r0f1", "r0f2"):
        narrow, wide = splits[(fold, "0.15")], splits[(fold, "0.45")]
        assert ((narrow == "test") == (wide == "test")).all()  # paired: the same test images
        assert (wide == "val").sum() > (narrow == "val").sum()  # the factor changed the validation split


def test_fold_runs_log_the_validation_share_the_protocol_used(make_wbc, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY_VAL.format(data=make_wbc(per_class=9), backbone=TINY_BACKBONE)
                    .replace("val_fraction: 0.15}", "val_fraction: 0.3}").replace("val_fraction: [0.15, 0.45]",
                                                                                 "masks: [none]"))
    run_study(load_study(path), tmp_path / "report")
    runs = mlflow.search_runs(experiment_names=["tiny_val"], output_format="list")
    folds = [r for r in runs if r.data.tags.get("bloodml.task") == "study-fold"]
    assert len(folds) == 3 and {r.data.params["val_fraction"] for r in folds} == {"0.3"}  # not the default 0.15


STUDY = """name: tiny
settings: {{data: {data}, backbone: {backbone}, pretrained: false, image_size: 32, epochs: 2, aug_views: 1,
           min_class_count: 2, near_duplicate_distance: -1, gradcam_samples: 0, bootstrap: 100, experiment: tiny}}
protocol: {{type: cv, folds: 3, repeats: 1}}
factors:
  masks: [none, cell]
  technique:
    plain: {{augment: false}}
    augmented: {{augment: true}}
controls: {{background_only: true}}
"""


def test_small_study_end_to_end(make_wbc, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(data=make_wbc(per_class=9), backbone=TINY_BACKBONE))
    spec = load_study(path)
    assert [c.name for c in spec.configurations] == ["masks=none__technique=plain", "masks=cell__technique=plain",
                                                     "masks=none__technique=augmented",
                                                     "masks=background__technique=plain"]
    result = run_study(spec, tmp_path / "report")
    assert result.leaks == 0 and len(result.comparisons) == 3
    report = result.report.read_text()
    for part in ("## Verdicts", "## Results", "## Background-only control", "## Leakage audit", "question_0.png"):
        assert part in report

    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    configs = [r for r in runs if r.data.tags.get("bloodml.task") == "study-configuration"]
    folds = [r for r in runs if r.data.tags.get("bloodml.task") == "study-fold"]
    assert len(configs) == 4 and len(folds) == 12
    assert all(r.data.tags["mlflow.parentRunId"] == result.parent_run_id for r in configs)
    assert {c.data.params["factor.masks"] for c in configs} == {"none", "cell", "background"}
    assert all("test_macro_f1_mean" in c.data.metrics and "test_macro_f1_ci_low" in c.data.metrics for c in configs)
    manifests = {}
    for run in folds:  # every configuration saw identical folds
        table = pd.read_csv(client.download_artifacts(run.info.run_id, "split_manifest.csv", str(tmp_path / run.info.run_id)))
        manifests.setdefault(run.data.tags["fold"], set()).add(tuple(table.sort_values("path")["split"]))
    assert len(manifests) == 3 and all(len(v) == 1 for v in manifests.values())
    # each fold run names its datasets (one per split, the digest of what the split holds): the same fold of two
    # configurations has the same digests, two folds differ
    digests = {}
    for run in folds:
        contexts = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset.digest
                    for d in run.inputs.dataset_inputs}
        assert set(contexts) == {"train", "val", "test"} and run.data.tags["bloodml.kind"] == "fold"
        digests.setdefault(run.data.tags["fold"], set()).add(tuple(sorted(contexts.items())))
    assert all(len(v) == 1 for v in digests.values()) and len({next(iter(v)) for v in digests.values()}) == 3
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["bloodml.kind"] == "study" and {c.data.tags["bloodml.kind"] for c in configs} == {"study"}
    assert "## Verdicts" in parent.data.tags["mlflow.note.content"]

    # an interrupted study resumes: finished configurations are reused, the unfinished one runs again
    unfinished = next(c for c in configs if c.info.run_name == "masks=cell__technique=plain")
    client.set_terminated(unfinished.info.run_id, "FAILED")
    again = run_study(spec, tmp_path / "report2", resume=True)
    assert again.parent_run_id == result.parent_run_id
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    assert len([r for r in runs if r.data.tags.get("bloodml.task") == "study-fold"]) == 12 + 3
    for name, scores in result.scores.items():
        if name != unfinished.info.run_name:
            assert again.scores[name] == scores


def test_online_study_stops_at_once_without_weights(monkeypatch, tmp_path):
    import urllib.error

    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    spec = load_study(REPO / "experiments/wbc_study.yaml", {"data": str(tmp_path)})
    with pytest.raises(BloodmlError, match="pretrained=false"):
        run_study(spec, tmp_path / "out")


def test_bad_study_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("factors: {masks: [none, cell]}\nprotocol: {type: bootstrap}\n")
    with pytest.raises(BloodmlError, match="protocol type 'bootstrap' is unknown"):
        load_study(bad)
    bad.write_text("factors: {colour: [red]}\n")
    with pytest.raises(BloodmlError, match="not a run parameter"):
        load_study(bad)
    # a bad value is refused when the file is read, naming the file and where in it the value is
    for text, where, message in [
            ("factors: {masks: [none, cel]}", "level 'cel' of factor 'masks'", "masks='cel' is not allowed"),
            ("factors: {views: {a: {augment: maybe}}}", "level 'a' of factor 'views'", "augment='maybe' is not a valid"),
            ("settings: {epochs: -3}\nfactors: {masks: [none, cell]}", "settings", "epochs=-3 is out of range"),
            ("settings: {epoch: 3}\nfactors: {masks: [none, cell]}", "settings", "unknown parameter 'epoch'")]:
        bad.write_text(text + "\n")
        with pytest.raises(BloodmlError) as refused:
            load_study(bad)
        assert str(refused.value).startswith(f"study {bad}, {where}: {message}"), refused.value


SHIPPED_STUDIES = sorted(p.name for p in (REPO / "experiments").glob("*.yaml") if "factors:" in p.read_text())


@pytest.mark.parametrize("name", SHIPPED_STUDIES)
def test_every_shipped_study_file_loads(name, monkeypatch):
    """A study file in experiments/ with a misspelt parameter or level would fail only when a user runs it: each one
    is read here as `bloodml study` reads it (its run file, every configuration's parameters, its test datasets)."""
    monkeypatch.chdir(REPO)
    path = REPO / "experiments" / name
    several = "leave_one_source_out" in path.read_text()  # its data collection is read for the sources' names only
    spec = load_study(path, {} if several else {"data": "unused"})
    assert len(spec.configurations) >= 2 and spec.questions


def test_study_takes_run_parameters_like_every_entry_point(make_wbc, tmp_path, capsys):
    """`mlflow run . -e study -P config=... -P data=... -P epochs=...` calls `bloodml study --config ... --data ...
    --epochs ...`: the run parameters override the study file's settings for every run."""
    from clihelp import run_cli

    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(data=tmp_path / "not-here", backbone=TINY_BACKBONE).replace(
        "protocol: {type: cv, folds: 3, repeats: 1}", "protocol: {type: holdout}").replace(
        "controls: {background_only: true}", ""))
    data = make_wbc(per_class=9)
    code, out, err = run_cli(capsys, "study", "--config", path, "--data", data, "--epochs", "1",
                             "--out", tmp_path / "report")
    assert code == 0, err
    folds = [r for r in mlflow.search_runs(experiment_names=["tiny"], output_format="list")
             if r.data.tags.get("bloodml.task") == "study-fold"]
    assert len(folds) == 3 and {r.data.params["data"] for r in folds} == {str(data)}
    assert {r.data.params["epochs"] for r in folds} == {"1"}
