import shutil
import tempfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from bloodml.config import build_config
from bloodml.splitting.prepare import read_labelled
from bloodml.data.readers import ReaderOptions, read_dataset
from bloodml.errors import BloodmlError
from bloodml.runtime import cache_root
from conftest import ALLIDB2, WBC, cell_image, needs_allidb2, needs_wbc


def test_wbc_layout_with_crlf_and_unpadded_ids(make_wbc):
    root = make_wbc(per_class=4)
    table, fmt, _ = read_dataset(root, ReaderOptions())
    assert fmt == "wbc" and len(table) == 8
    assert table["mask_path"].notna().all() and set(table["label"]) == {"1", "2"}


@needs_wbc
def test_real_wbc_names_and_rare_class_dropped():
    table, fmt, _, notes = read_labelled(build_config(None, {"data": str(WBC)}))
    assert fmt == "wbc" and len(table) == 299
    assert table["label"].value_counts().to_dict() == {"neutrophil": 176, "lymphocyte": 53, "monocyte": 48,
                                                       "eosinophil": 22}
    assert any("basophil" in n for n in notes)


@needs_allidb2
def test_allidb2_through_its_mapping_csv():
    config = build_config(None, {
        "data": str(ALLIDB2), "manifest": "mapping.csv", "label_column": "label_name",
        "positive_classes": "blast_ALL", "negative_name": "normal"})
    table, fmt, _, _ = read_labelled(config)
    assert fmt == "manifest" and len(table) == 260 and table["mask_path"].notna().all()
    assert table["label"].value_counts().to_dict() == {"blast_ALL": 130, "normal": 130}
    assert table["path"].str.endswith(".Jpg").sum() == 4  # mixed-case extensions kept as shipped


def test_manifest_with_groups_bom_and_spaces(tmp_path):
    root = tmp_path / "ds"
    (root / "my images").mkdir(parents=True)
    rows = ["\ufefffile , diagnosis , patient"]
    for i in range(6):
        image, _ = cell_image("alpha" if i % 2 else "beta", i)
        Image.fromarray(image).save(root / "my images" / f"c{i}.JPG")
        rows.append(f" my images/c{i}.JPG , {'pos' if i % 2 else 'neg'} , p{i // 2}")
    (root / "list.csv").write_text("\n".join(rows), encoding="utf-8")
    table, fmt, _ = read_dataset(root / "list.csv", ReaderOptions(image_column="file", label_column="diagnosis",
                                                                  group_column="patient"))
    assert fmt == "manifest" and list(table["group"]) == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert table["mask_path"].isna().all()


def test_folders_layout_with_masks_dir(make_folders):
    root = make_folders(per_class=3)
    table, fmt, _ = read_dataset(root, ReaderOptions(masks_dir="masks"))
    assert fmt == "folders" and len(table) == 9 and table["mask_path"].notna().all()
    assert set(table["label"]) == {"alpha", "beta", "gamma"}


def test_a_masks_folder_beside_the_classes_is_not_a_class(make_folders, tmp_path):
    root = make_folders(per_class=3)  # alpha/, beta/, gamma/ and masks/{alpha,beta,gamma}/, no masks_dir given
    table, fmt, _ = read_dataset(root, ReaderOptions())
    assert fmt == "folders" and set(table["label"]) == {"alpha", "beta", "gamma"} and len(table) == 9
    assert table["mask_path"].notna().all() and all("/masks/" in m for m in table["mask_path"])
    assert table.attrs["notes"] == ["took masks/ as masks_dir: its sub-folders mirror the class folders; pass "
                                    "masks_dir= to choose another folder"]
    (root / "masks" / "gamma").rename(root / "masks" / "other")  # no longer a mirror: read as a class, as before
    table, _, _ = read_dataset(root, ReaderOptions())
    assert set(table["label"]) == {"alpha", "beta", "gamma", "masks"} and table["mask_path"].isna().all()


def test_images_and_masks_trees_side_by_side_are_not_two_classes(make_folders, tmp_path):
    root = make_folders(per_class=2)
    (root / "images").mkdir()
    for label in ("alpha", "beta", "gamma"):
        (root / label).rename(root / "images" / label)  # images/{alpha,beta,gamma} beside masks/{alpha,beta,gamma}
    with pytest.raises(BloodmlError, match=r"images/ and masks/ hold the same sub-folders \(alpha, beta, gamma\), so "
                                           r"they are not two classes; .* data=.*images masks_dir=\.\./masks$"):
        read_dataset(root, ReaderOptions())
    table, _, _ = read_dataset(root / "images", ReaderOptions(masks_dir="../masks"))  # the command it suggests
    assert set(table["label"]) == {"alpha", "beta", "gamma"} and table["mask_path"].notna().all()
    # classes that share sub-folders (one per patient) are classes: no masks-like name, no refusal
    patients = tmp_path / "by_patient"
    for label in ("tumour", "normal"):
        for patient in ("p1", "p2"):
            (patients / label / patient).mkdir(parents=True)
            Image.fromarray(cell_image("alpha", len(patient))[0]).save(patients / label / patient / "c.png")
    table, _, _ = read_dataset(patients, ReaderOptions())
    assert sorted(table["label"]) == ["normal", "normal", "tumour", "tumour"]


def test_masks_dir_typed_relative_to_the_working_folder(make_folders, tmp_path, monkeypatch):
    root = make_folders(per_class=3)
    (root / "masks").rename(tmp_path / "their_masks")  # beside the data, not inside it
    monkeypatch.chdir(tmp_path)
    table, _, _ = read_dataset(root, ReaderOptions(masks_dir="their_masks"))
    assert len(table) == 9 and table["mask_path"].notna().all()
    assert all(str(tmp_path / "their_masks") in m for m in table["mask_path"])
    with pytest.raises(BloodmlError, match=r"^masks_dir nowhere: not a folder \(looked for .*nowhere and .*nowhere\)"):
        read_dataset(root, ReaderOptions(masks_dir="nowhere"))


def test_zip_of_a_dataset(make_folders, tmp_path):
    root = make_folders(per_class=2)
    archive = tmp_path / "ds.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in root.rglob("*.png"):
            handle.write(path, path.relative_to(root.parent))
    table, fmt, _ = read_dataset(archive, ReaderOptions(masks_dir="masks"), workdir=tmp_path)
    assert fmt == "folders" and len(table) == 6 and table["mask_path"].notna().all()


def test_a_zip_given_as_data_is_unpacked_once_into_the_cache_and_nothing_is_left_in_tmp(make_folders, tmp_path,
                                                                                         monkeypatch):
    root = make_folders(per_class=2)
    archive = tmp_path / "ds.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in root.rglob("*.png"):
            handle.write(path, path.relative_to(root.parent))
    scratch = tmp_path / "system_tmp"  # the system's temporary folder, watched
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    first, _, _ = read_dataset(archive, ReaderOptions())
    unpacked = Path(first["path"].iloc[0])
    assert unpacked.is_relative_to(cache_root() / "unzipped") and list(scratch.iterdir()) == []
    stamp = unpacked.stat().st_mtime_ns
    again, _, _ = read_dataset(archive, ReaderOptions())  # the same files, not unpacked again
    assert list(again["path"]) == list(first["path"]) and unpacked.stat().st_mtime_ns == stamp
    assert len(list((cache_root() / "unzipped").iterdir())) == 1
    shutil.rmtree(cache_root() / "unzipped")  # an interrupted unpacking (no completion mark) is redone
    (cache_root() / "unzipped" / unpacked.relative_to(cache_root() / "unzipped").parts[0] / "files").mkdir(
        parents=True)
    third, _, _ = read_dataset(archive, ReaderOptions())
    assert list(third["path"]) == list(first["path"]) and Path(third["path"].iloc[0]).is_file()

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as handle:
        handle.writestr("ok/a/x.png", b"")
        handle.writestr("../escape.png", b"")
    for workdir in (None, tmp_path / "work"):
        with pytest.raises(BloodmlError, match="zip-slip"):
            read_dataset(evil, ReaderOptions(), workdir=workdir)
    assert list(scratch.iterdir()) == [] and len(list((cache_root() / "unzipped").iterdir())) == 1


def test_zip_slip_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("../../escaped.txt", "x")
    with pytest.raises(BloodmlError, match="outside the extraction folder"):
        read_dataset(archive, ReaderOptions(), workdir=tmp_path)
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_row_without_image_names_the_row(make_wbc):
    root = make_wbc(per_class=3)
    (root / "002.bmp").unlink()
    with pytest.raises(BloodmlError, match=r"labels.csv:3: no image file for ID 2"):
        read_dataset(root, ReaderOptions())


def test_unknown_label_names_the_row(make_wbc):
    root = make_wbc(per_class=3)
    csv = root / "labels.csv"
    csv.write_text(csv.read_text().replace("\n4,", "\n4,") + "7,9\n")
    Image.fromarray(cell_image("alpha", 7)[0]).save(root / "007.bmp")
    with pytest.raises(BloodmlError, match=r"labels.csv:8: unknown label '9'"):
        read_labelled(build_config(None, {"data": str(root)}))


def test_path_escaping_the_data_folder(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    Image.fromarray(cell_image("alpha", 1)[0]).save(tmp_path / "outside.png")
    pd.DataFrame({"image": ["../outside.png"], "label": ["a"]}).to_csv(root / "m.csv", index=False)
    with pytest.raises(BloodmlError, match="outside the data folder"):
        read_dataset(root / "m.csv", ReaderOptions())


def test_empty_dataset(tmp_path):
    (tmp_path / "empty" / "classA").mkdir(parents=True)
    with pytest.raises(BloodmlError, match="cannot tell the dataset layout|no labelled images"):
        read_dataset(tmp_path / "empty", ReaderOptions())


def test_spreadsheet_manifest_semicolons_capitalised_headers_windows_paths(tmp_path):
    """A CSV as a European spreadsheet or a Windows machine writes it: semicolon-delimited, 'Image;Label;Mask'
    headers, backslash paths. It is read as the manifest it is, masks included, not passed over for the folders."""
    root = tmp_path / "ds"
    for folder in ("imgs", "masks"):
        (root / folder).mkdir(parents=True)
    rows = ["\ufeff Image ; Label ;Mask"]
    for i in range(4):
        image, mask = cell_image("alpha" if i % 2 else "beta", i)
        Image.fromarray(image).save(root / "imgs" / f"c{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
        rows.append(f"imgs\\c{i}.png;{'pos' if i % 2 else 'neg'};masks\\c{i}.png")
    (root / "Labels.csv").write_text("\r\n".join(rows), encoding="utf-8")
    table, fmt, _ = read_dataset(root, ReaderOptions())
    assert fmt == "manifest" and list(table["label"]) == ["neg", "pos", "neg", "pos"]
    assert [p.split("/")[-2:] for p in table["path"]] == [["imgs", f"c{i}.png"] for i in range(4)]
    assert [p.split("/")[-2:] for p in table["mask_path"]] == [["masks", f"c{i}.png"] for i in range(4)]


def test_manifest_rows_naming_missing_images_are_all_counted(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    for i in range(5):
        Image.fromarray(cell_image("alpha", i)[0]).save(root / f"c{i}.png")
    names = ["c0.png", "gone1.png", "c2.png", "gone3.png", "gone4.png", "gone5.png"]
    pd.DataFrame({"image": names, "label": ["a"] * 6}).to_csv(root / "m.csv", index=False)
    with pytest.raises(BloodmlError) as caught:
        read_dataset(root / "m.csv", ReaderOptions())
    message = str(caught.value)
    assert "4 of 6 rows name an image that does not exist (line 3 gone1.png, line 5 gone3.png, line 6 gone4.png, " \
           "...)" in message and "gone5" not in message


def test_folders_layout_says_which_csv_it_did_not_use(make_folders):
    root = make_folders(per_class=3)
    (root / "summary.csv").write_text("x,y\n1,2\n")
    table, fmt, _, notes = read_labelled(build_config(None, {"data": str(root), "masks_dir": "masks",
                                                            "min_class_count": 2}))
    assert fmt == "folders" and len(table) == 9
    assert notes[0].startswith("not used: summary.csv (no 'image' column)")


def test_labels_differing_only_in_case_are_one_class(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    labels = ["Neutrophil", "neutrophil", "Neutrophil", "lymphocyte", "Lymphocyte", "lymphocyte", "LYMPHOCYTE"]
    for i in range(len(labels)):
        Image.fromarray(cell_image("alpha", i)[0]).save(root / f"c{i}.png")
    pd.DataFrame({"image": [f"c{i}.png" for i in range(len(labels))], "label": labels}).to_csv(root / "m.csv",
                                                                                               index=False)
    table, _, _, notes = read_labelled(build_config(None, {"data": str(root / "m.csv"), "min_class_count": 1}))
    assert table["label"].value_counts().to_dict() == {"lymphocyte": 4, "Neutrophil": 3}
    assert notes == ["labels differing only in case taken as one class 'lymphocyte': 'LYMPHOCYTE' (1), "
                     "'Lymphocyte' (1), 'lymphocyte' (2)",
                     "labels differing only in case taken as one class 'Neutrophil': 'Neutrophil' (2), "
                     "'neutrophil' (1)"]
