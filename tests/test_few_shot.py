"""The few_shot study protocol on synthetic data: a source model per draw shared by the adapt strategies, the
target halved so no class gives more than half its cells, k capped at what the pool has, random and suggested
selection scored on the same test cells, the curve, the paired verdicts and the runs in MLflow."""

from __future__ import annotations

import mlflow
import pandas as pd
import yaml

from bloodml.study.runner import run_study
from bloodml.study.spec import load_study
from conftest import new_instrument, tiny_overrides


def test_few_shot_study_draws_caps_and_reports(make_folders, tmp_path):
    source = make_folders(per_class=8)
    target_csv = new_instrument(tmp_path / "new", per_class=6)
    (tmp_path / "source.yaml").write_text(yaml.safe_dump(tiny_overrides(source, gradcam_samples=0, bootstrap=100)))
    (tmp_path / "target.yaml").write_text(yaml.safe_dump({"data": str(target_csv.parent), "format": "manifest",
                                                           "manifest": target_csv.name, "min_class_count": 2}))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "synthetic_few_shot", "run": str(tmp_path / "source.yaml"),
        "protocol": {"type": "few_shot", "target": str(tmp_path / "target.yaml"), "k": [0, 2, 5], "repeats": 2,
                     "selection": ["random", "suggested"]},
        "factors": {"adapt_strategy": ["joint", "head"]}, "settings": {"adapt_epochs": 2}}))
    spec = load_study(tmp_path / "study.yaml")
    result = run_study(spec, tmp_path / "report")

    table = result.table
    assert len(table) == 2 * 2 * (1 + 2 * 2)  # configurations x draws x (k=0 + two k x two selections)
    pools = result.pools
    assert (pools[["pool_alpha", "pool_beta", "pool_gamma"]] == 3).all().all()  # half of each class's 6 cells
    capped = table.loc[(table["k"] == 5) & (table["selection"] == "random"), "n_labelled"]
    assert (capped == 9).all()  # k=5 asks for more than a class can give: 3 per class
    suggested = table.loc[(table["k"] == 2) & (table["selection"] == "suggested"), "n_labelled"]
    assert (suggested == 6).all()  # the same number of cells as random's k per class
    per_draw = table.groupby(["configuration", "draw"])["n_test"].nunique()
    assert (per_draw == 1).all() and (table["n_test"] == 9).all()  # every point of a draw on the same test cells

    questions = [c.question for c in result.comparisons]
    assert "adapt_strategy=joint: suggested vs random selection at k=2" in questions
    assert "adapt_strategy=head: k=5 (random) vs k=0" in questions
    assert any(q.startswith("Does adapt_strategy matter? (k=2, random)") for q in questions)
    report = (tmp_path / "report" / "study_report.md").read_text()
    assert "never gives more than half its cells" in report and "| adapt_strategy=head | suggested |" in report
    for name in ("per_draw.csv", "curve.csv", "comparisons.csv", "pools.csv", "learning_curve.png"):
        assert (tmp_path / "report" / name).is_file(), name
    curve = pd.read_csv(tmp_path / "report" / "curve.csv")
    assert len(curve) == 2 * 2 * 3 and curve["draws"].eq(2).all()

    children = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    sources = [r for r in children if r.data.tags.get("fold", "").startswith("source-")]
    assert len(sources) == 2  # one source model per draw, shared by both adapt strategies
    folds = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string="tags.`bloodml.kind` = 'fold' and tags.k = '5'")
    assert len(folds) == 2 * 2 * 2 and all("test_macro_f1" in r.data.metrics for r in folds)
