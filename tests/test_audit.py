import shutil

import numpy as np

from bloodml.config import build_config
from bloodml.splitting.prepare import prepare
from bloodml.splitting.splits import manifest
from clihelp import run_cli
from conftest import WBC, needs_wbc


def _copy_split(files, folder):
    for path in files:
        target = folder / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)


@needs_wbc
def test_lab_script_split_is_caught_and_bloodmls_passes(tmp_path, capsys):
    files = np.array(sorted(WBC.glob("*.bmp")))
    rng = np.random.default_rng(0)
    # The student lab's bug: validation and test each sampled from the full set; training = all minus validation.
    val = rng.choice(len(files), size=45, replace=False)
    test = rng.choice(len(files), size=45, replace=False)
    train = np.setdiff1d(np.arange(len(files)), val)
    lab = tmp_path / "lab"
    for name, index in (("train", train), ("val", val), ("test", test)):
        _copy_split(files[index], lab / name / "nested")
    code, out, _ = run_cli(capsys, "audit-split", "--train", lab / "train", "--val", lab / "val", "--test", lab / "test")
    assert code == 1 and "LEAKING" in out and "content: " in out

    config = build_config(None, {"data": str(WBC)})
    table = prepare(config, progress=False).table
    manifest_csv = tmp_path / "split_manifest.csv"
    manifest(table, str(WBC)).to_csv(manifest_csv, index=False)
    code, out, _ = run_cli(capsys, "audit-split", manifest_csv, "--root", WBC)
    assert code == 0 and "clean" in out, out

    ours = tmp_path / "ours"
    for name in ("train", "val", "test"):
        _copy_split([WBC / p for p in table.loc[table["split"] == name, "path"].map(lambda p: p.split("/")[-1])],
                    ours / name)
    code, out, _ = run_cli(capsys, "audit-split", "--train", ours / "train", "--val", ours / "val", "--test", ours / "test")
    assert code == 0, out


def test_audit_reports_path_content_and_near_copies(make_folders, tmp_path, capsys):
    root = make_folders(per_class=2, classes=("alpha",))
    images = sorted((root / "alpha").glob("*.png"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(images[0], tmp_path / "a" / "x.png")
    shutil.copy(images[0], tmp_path / "b" / "y.png")
    code, out, _ = run_cli(capsys, "audit-split", "--train", tmp_path / "a", "--test", tmp_path / "b")
    assert code == 1 and "content: train/" in out
    code, out, err = run_cli(capsys, "audit-split")
    assert code == 2 and err.startswith("error: audit-split needs")


@needs_wbc
def test_a_clean_split_with_lookalikes_on_both_sides_passes(tmp_path, capsys):
    """Two different cells that look alike may sit on different sides; every true copy stays on one side."""
    from test_copies import DISTINCT_LOOKALIKES, TRUE_COPIES

    together = {n: a for a, b in TRUE_COPIES for n in (a, b)}
    files = sorted(WBC.glob("*.bmp"))
    side = {}
    for k, path in enumerate(files):
        owner = together.get(path.stem, path.stem)
        side[path.stem] = side.get(owner) or ("train", "val", "test")[k % 3]
    for a, b in DISTINCT_LOOKALIKES:  # look-alikes forced apart
        side[a], side[b] = "train", "test"
    for a, b in TRUE_COPIES:
        side[b] = side[a]
    for path in files:
        target = tmp_path / side[path.stem] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    code, out, _ = run_cli(capsys, "audit-split", "--train", tmp_path / "train", "--val", tmp_path / "val",
                           "--test", tmp_path / "test")
    assert code == 0 and "clean" in out, out
    shutil.move(str(tmp_path / side["157"] / "157.bmp"), str(tmp_path / ("val" if side["157"] != "val" else "test")))
    code, out, _ = run_cli(capsys, "audit-split", "--train", tmp_path / "train", "--val", tmp_path / "val",
                           "--test", tmp_path / "test")
    assert code == 1 and "near-duplicate" in out and "157.bmp" in out and "158.bmp" in out, out
