import pandas as pd
import pytest

from bloodml.config import build_config, replace
from bloodml.splitting.prepare import prepare
from bloodml.splitting.splits import assign_splits, duplicate_groups
from bloodml.errors import BloodmlError
from conftest import ALLIDB2, REPO, needs_allidb2


def synthetic_table(n_per_class=(40, 20, 10), groups=None):
    labels = [f"c{i}" for i, n in enumerate(n_per_class) for _ in range(n)]
    n = len(labels)
    return pd.DataFrame({"path": [f"/x/{i}.png" for i in range(n)], "label": labels, "mask_path": None,
                         "group": groups if groups is not None else [None] * n, "origin": "t",
                         "sha256": [f"{i:064x}" for i in range(n)], "phash": [f"{(i * 0x9E3779B97F4A7C15) % 2**64:016x}" for i in range(n)]})


def test_split_is_deterministic_stratified_and_sized():
    table = synthetic_table()
    a = assign_splits(table, 0.15, 0.15, seed=7)
    b = assign_splits(table, 0.15, 0.15, seed=7)
    c = assign_splits(table, 0.15, 0.15, seed=8)
    assert list(a["split"]) == list(b["split"]) and list(a["split"]) != list(c["split"])
    counts = a.groupby(["label", "split"]).size().unstack()
    assert (counts > 0).all().all()  # every class in every split
    assert a["split"].value_counts().to_dict() == pytest.approx({"train": 49, "val": 10, "test": 11}, abs=2)


def test_groups_never_straddle_splits():
    groups = [f"patient{i // 4}" for i in range(70)]
    table = synthetic_table(groups=groups)
    table["label"] = [f"c{(i // 4) % 2}" for i in range(70)]  # one label per patient
    result = assign_splits(table, 0.2, 0.2, seed=1)
    assert (result.groupby("group")["split"].nunique() == 1).all()


def test_copies_are_grouped_and_conflicting_labels_refused():
    table = synthetic_table()
    table.loc[5, "sha256"] = table.loc[6, "sha256"]  # exact copy
    near = [(8, 9, 0.95)]  # a near-copy pair confirmed by the second look
    groups = duplicate_groups(table, near)
    assert groups[5] == groups[6] and groups[8] == groups[9] and groups.nunique() == 68
    table.loc[6, "label"] = "c2"
    with pytest.raises(BloodmlError, match="carry different labels"):
        assign_splits(table, 0.15, 0.15, seed=0, copies=near)


def test_class_too_small_for_the_split():
    with pytest.raises(BloodmlError, match="class 'c2' has 2 independent image"):
        assign_splits(synthetic_table((40, 20, 2)), 0.15, 0.15, seed=0)


@needs_allidb2
def test_allidb2_duplicate_pairs_stay_together():
    config = build_config(REPO / "experiments/allidb2.yaml", {"data": str(ALLIDB2)})
    for seed in range(5):
        table = prepare(replace(config, seed=seed), progress=False).table
        name = table["path"].str.extract(r"(Asli-\d+)\.", expand=False)
        for a, b in (("Asli-1", "Asli-67"), ("Asli-223", "Asli-257")):
            splits = set(table.loc[name.isin([a, b]), "split"])
            assert len(splits) == 1, (seed, a, b, splits)
