"""Dataset readers: each turns a user's folder into one sample table (path, label, mask_path, group).

Formats: ``wbc`` (labels CSV with numeric IDs + ``NNN.<ext>`` images and masks, as wbc-zheng2018),
``manifest`` (a CSV with image / label / optional mask / optional group columns),
``folders`` (one sub-folder per class, optional parallel masks folder), and a ``.zip`` of any of these.
Every path is checked to stay inside the data folder; problems raise one-line :class:`BloodmlError`.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path, PureWindowsPath

import pandas as pd

from ..errors import BloodmlError
from .archives import extract_zip, is_zip
from .images import is_image_file
from .masks import find_mask

FORMATS = ("auto", "wbc", "manifest", "folders")
TABLE_COLUMNS = ["path", "label", "mask_path", "group", "origin"]
WBC_CLASS_NAMES = {"1": "neutrophil", "2": "lymphocyte", "3": "monocyte", "4": "eosinophil", "5": "basophil"}


@dataclass(frozen=True)
class ReaderOptions:
    """What a reader needs to know beyond the folder itself (all come from the run configuration)."""

    format: str = "auto"
    manifest: str = ""  # CSV file name inside the data folder (manifest format)
    image_column: str = "image"
    label_column: str = "label"
    mask_column: str = ""  # "" = use a column called 'mask' if there is one
    group_column: str = ""
    masks_dir: str = ""  # folders format: parallel folder of masks (relative to data or absolute)
    image_suffix: str = ".bmp"  # wbc format
    mask_suffix: str = ".png"  # wbc format
    manifest_query: str = ""  # manifest format: keep the rows matching this pandas query


def read_csv(path: Path) -> pd.DataFrame:
    """Read a label CSV tolerating BOMs (UTF-8, or UTF-16 as Excel's 'Unicode Text' writes), CRLF, stray whitespace
    and the delimiter (comma, or the semicolon, tab or bar some spreadsheets write); strings only."""
    if not Path(path).is_file():
        raise BloodmlError(f"{path}: CSV not found; fix manifest= or data=.")
    raw = Path(path).read_bytes()
    try:
        # UTF-16 says so in its byte-order mark (Excel's 'Unicode Text'); anything else is to be UTF-8
        text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BloodmlError(
            f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV (Excel: 'CSV UTF-8')."
        )
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True,
                            sep=_delimiter(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise BloodmlError(f"{path}: not a readable CSV ({str(exc).strip().splitlines()[0]}); fix the file.")
    table.columns = [str(c).strip() for c in table.columns]
    return table.apply(lambda col: col.str.strip())


def _delimiter(text: str) -> str:
    """The header line's delimiter: the most frequent of comma, semicolon, tab and bar (comma when none is)."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def find_column(columns, name: str) -> str:
    """The header's spelling of column ``name``: itself, else the one column equal to it ignoring case (an
    'Image' header for image_column=image); ``name`` unchanged when there is none, for the caller's error."""
    if not name or name in columns:
        return name
    matches = [c for c in columns if str(c).casefold() == name.casefold()]
    return matches[0] if len(matches) == 1 else name


def native_path(root: Path, relative: str) -> str:
    """A path as a CSV gives it, in this system's form: a manifest written on Windows (``imgs\\c0.png``) works
    elsewhere, unless a file of that literal name exists."""
    if "\\" in relative and os.sep != "\\" and not (Path(root) / relative).exists():
        return PureWindowsPath(relative).as_posix()
    return relative


def _inside(root: Path, relative: str, source: str) -> Path:
    """Resolve ``relative`` against ``root`` and refuse anything (``../``, symlinks) that leaves it."""
    if not relative:
        raise BloodmlError(f"{source}: empty file name; fill it in or remove the row.")
    candidate = Path(native_path(root, relative))
    path = candidate if candidate.is_absolute() else root / candidate
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BloodmlError(
            f"{source}: '{relative}' points outside the data folder {root}; keep images and masks inside it."
        )
    return path


def _require_columns(table: pd.DataFrame, columns: dict[str, str], source: Path) -> None:
    for option, column in columns.items():
        if column and column not in table.columns:
            raise BloodmlError(
                f"{source}: no column '{column}' (columns: {', '.join(table.columns)}); "
                f"set {option}= to the right column name."
            )


def read_manifest(csv_path: Path, options: ReaderOptions) -> pd.DataFrame:
    csv_path = Path(csv_path)
    root = csv_path.parent
    table = read_csv(csv_path)
    if options.manifest_query:
        table = _query(table, options.manifest_query, csv_path)
    image_column, label_column, group_column = (find_column(table.columns, name) for name in
                                                (options.image_column, options.label_column, options.group_column))
    mask_column = find_column(table.columns, options.mask_column or "mask")
    if not options.mask_column and mask_column not in table.columns:
        mask_column = ""
    _require_columns(
        table,
        {"image_column": image_column, "label_column": label_column,
         "mask_column": mask_column, "group_column": group_column},
        csv_path,
    )
    rows, unlabelled = [], []
    for line, row in enumerate(table.to_dict("records"), start=2):
        where = f"{csv_path}:{line}"
        label = row[label_column]
        if not any(row.values()):  # a blank row (",,," from a spreadsheet)
            continue
        if label == "":
            unlabelled.append(line)
            continue
        mask = row[mask_column] if mask_column else ""
        rows.append({
            "path": _inside(root, row[image_column], where),
            "label": label,
            "mask_path": _inside(root, mask, where) if mask else None,
            "group": row[group_column] or None if group_column else None,
            "origin": where,
        })
    missing = [row for row in rows if not row["path"].is_file()]
    if missing:
        shown = ", ".join(f"line {row['origin'].rsplit(':', 1)[1]} {row['path'].name}" for row in missing[:3])
        raise BloodmlError(f"{csv_path}: {len(missing)} of {len(rows)} rows name an image that does not exist ("
                           f"{shown}{', ...' if len(missing) > 3 else ''}); fix the paths (relative to the CSV's "
                           f"folder) or remove the rows.")
    return _finish(rows, csv_path, unlabelled)


def csv_files(folder: Path) -> list[Path]:
    """The CSV files directly in ``folder``, sorted."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".csv" and p.is_file())


def _find_label_csv(folder: Path) -> Path:
    csvs = csv_files(folder)
    if len(csvs) != 1:
        found = ", ".join(p.name for p in csvs) or "none"
        raise BloodmlError(f"{folder}: the wbc format needs exactly one labels CSV (found: {found}); "
                           f"pass manifest=<file> to choose one.")
    return csvs[0]


def read_wbc(folder: Path, options: ReaderOptions) -> pd.DataFrame:
    """Labels CSV with columns (ID, label); image ``NNN<image_suffix>`` and mask ``NNN<mask_suffix>``."""
    folder = Path(folder)
    csv_path = folder / options.manifest if options.manifest else _find_label_csv(folder)
    table = read_csv(csv_path)
    if table.shape[1] < 2:
        raise BloodmlError(f"{csv_path}: needs two columns (image ID, class label); fix the file.")
    by_number: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for path in folder.iterdir():
        if path.stem.isdigit():
            if path.suffix.lower() == options.image_suffix.lower():
                by_number[int(path.stem)] = path
            elif path.suffix.lower() == options.mask_suffix.lower():
                masks[int(path.stem)] = path
    id_col, label_col = table.columns[0], table.columns[1]
    rows, seen = [], {}
    unlabelled = []
    for line, row in enumerate(table.to_dict("records"), start=2):
        where = f"{csv_path}:{line}"
        ident = row[id_col]
        if not any(row.values()):  # a blank row (",," from a spreadsheet)
            continue
        if not re.fullmatch(r"\d+", ident):
            raise BloodmlError(f"{where}: image ID '{ident}' is not a number; fix the row.")
        number = int(ident)
        if number in seen:
            raise BloodmlError(f"{where}: image ID {number} is listed twice (first on line {seen[number]}); "
                               f"keep one row per image.")
        seen[number] = line
        if number not in by_number:
            raise BloodmlError(f"{where}: no image file for ID {number} (expected e.g. "
                               f"{number:03d}{options.image_suffix} in {folder}); add it or remove the row.")
        if row[label_col] == "":
            unlabelled.append(line)
            continue
        image = _inside(folder, by_number[number].name, where)
        mask = _inside(folder, masks[number].name, where) if number in masks else None
        rows.append({"path": image, "label": row[label_col], "mask_path": mask, "group": None, "origin": where})
    return _finish(rows, csv_path, unlabelled)


def read_folders(folder: Path, options: ReaderOptions) -> pd.DataFrame:
    folder = Path(folder)
    masks_root = None
    if options.masks_dir:
        masks_root = masks_folder(folder, options.masks_dir)
    rows, notes = [], []
    class_dirs = class_folders(folder)
    mirror = mirrored_masks_folder(class_dirs) if masks_root is None else None
    if mirror is None and masks_root is None:
        refuse_parallel_trees(folder, class_dirs)
    if mirror is not None:  # masks beside the class folders, but no masks_dir: not a class of mask images
        masks_root = mirror
        notes.append(f"took {mirror.name}/ as masks_dir: its sub-folders mirror the class folders; pass masks_dir= "
                     f"to choose another folder")
    for class_dir in class_dirs:
        if masks_root is not None and class_dir.resolve() == masks_root.resolve():
            continue
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file() and is_image_file(p)):
            _inside(folder, str(path.relative_to(folder)), str(path))
            mask = find_mask(path, masks_root) if masks_root is not None else None
            rows.append({"path": path, "label": class_dir.name, "mask_path": mask, "group": None,
                         "origin": str(path)})
    return _finish(rows, folder, notes=notes)


def class_folders(folder: Path) -> list[Path]:
    """The folders directly in ``folder`` (hidden ones left out), sorted: the classes of the folders layout."""
    return sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))


MASK_FOLDER_WORDS = ("mask", "label", "annotation", "segmentation", "ground_truth", "groundtruth")


def refuse_parallel_trees(folder: Path, class_dirs: list[Path]) -> None:
    """``images/{alpha,beta}`` beside ``masks/{alpha,beta}`` with data= at their parent would train 'images' vs
    'masks': refused with the command that was meant. Only where one of the two is named as masks are (classes
    may share sub-folders legitimately: one per patient)."""
    subfolders = {d: frozenset(p.name for p in class_folders(d)) for d in class_dirs}
    for masks in (d for d in class_dirs if any(word in d.name.lower() for word in MASK_FOLDER_WORDS)):
        for images in class_dirs:
            shared = subfolders[masks]
            if images != masks and len(shared) >= 2 and shared == subfolders[images]:
                raise BloodmlError(
                    f"{folder}: {images.name}/ and {masks.name}/ hold the same sub-folders "
                    f"({', '.join(sorted(shared))}), so they are not two classes; point data= at the images and "
                    f"masks_dir= at the masks: data={images} masks_dir=../{masks.name}")


def mirrored_masks_folder(class_dirs: list[Path]) -> Path | None:
    """The one top-level folder whose sub-folders are named after every other top-level folder (at least two):
    masks laid out beside the classes (``masks/alpha``, ``masks/beta`` next to ``alpha``, ``beta``)."""
    names = {d.name for d in class_dirs}
    found = [d for d in class_dirs if len(names) >= 3
             and names - {d.name} <= {p.name for p in class_folders(d)}]
    return found[0] if len(found) == 1 else None


def masks_folder(folder: Path, masks_dir: str) -> Path:
    """``masks_dir`` as given: absolute, relative to the data folder (as in a run file), or, failing that,
    relative to the working folder (as typed on a command line)."""
    given = Path(masks_dir)
    tried = [given] if given.is_absolute() else [folder / given, Path.cwd() / given]
    for candidate in tried:
        if candidate.is_dir():
            return candidate
    raise BloodmlError(f"masks_dir {masks_dir}: not a folder (looked for {' and '.join(map(str, tried))}); fix the "
                       f"path or leave masks_dir empty.")


def _finish(rows: list[dict], source: Path, unlabelled: list[int] | None = None,
            notes: list[str] | None = None) -> pd.DataFrame:
    """The sample table, with the reader's ``notes`` in ``table.attrs["notes"]``; rows left out for an empty label
    (their CSV line numbers) are named there too, and a file with labels on none of its rows is refused."""
    unlabelled, notes = unlabelled or [], list(notes or [])
    lines = ("line " if len(unlabelled) == 1 else "lines ") + ", ".join(map(str, unlabelled[:5])) + (
        ", ..." if len(unlabelled) > 5 else "")
    if not rows and unlabelled:
        raise BloodmlError(f"{source}: none of its {len(unlabelled)} rows has a label ({lines}); fill in the "
                           f"labels or set label_column= to the column that holds them.")
    if not rows:
        raise BloodmlError(f"{source}: no labelled images found; check the folder and the format= option.")
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    if unlabelled:
        notes.append(f"{source}: left out {len(unlabelled)} row(s) with an empty label ({lines}); label them to use "
                     f"them")
    if notes:
        table.attrs["notes"] = notes
    if unlabelled:
        table.attrs["unlabelled_lines"] = list(unlabelled)  # for commands that refuse them (adapt)
    table["path"] = table["path"].map(str)
    table["mask_path"] = table["mask_path"].map(lambda p: str(p) if p is not None else None)
    duplicated = table["path"].duplicated()
    if duplicated.any():
        raise BloodmlError(f"{source}: image {table.loc[duplicated, 'path'].iloc[0]} is listed more than once; "
                           f"keep one row per image.")
    return table


def detect_format(folder: Path, options: ReaderOptions) -> str:
    folder = Path(folder)
    if folder.is_file():
        return "manifest"
    if options.manifest:
        header = read_csv(folder / options.manifest).columns
        return "manifest" if find_column(header, options.image_column) in header else "wbc"
    csvs = csv_files(folder)
    if csvs:
        headers = [read_csv(p).columns for p in csvs]
        if any(find_column(header, options.image_column) in header for header in headers):
            return "manifest"
        if any(p.stem.isdigit() and is_image_file(p) for p in folder.iterdir()):
            return "wbc"
    if any(p.is_dir() and any(is_image_file(f) for f in p.rglob("*")) for p in folder.iterdir()):
        return "folders"
    raise BloodmlError(
        f"{folder}: cannot tell the dataset layout; pass format= (wbc, manifest or folders) and see "
        f"docs/reference/data-layouts.md."
    )


def unused_csv_note(root: Path, fmt: str, options: ReaderOptions) -> str:
    """One line when the folders layout was chosen beside CSV files (a manifest with another header, or with a
    delimiter or encoding it was not read with), so a user whose labels file was passed over knows it."""
    if fmt != "folders" or options.format != "auto" or not Path(root).is_dir():
        return ""
    csvs = [p.name for p in csv_files(root)]
    if not csvs:
        return ""
    return (f"not used: {', '.join(csvs)} (no '{options.image_column}' column); read one folder per class. To use "
            f"a CSV, pass format=manifest and image_column=/label_column= with its column names.")


def read_dataset(data: str | Path, options: ReaderOptions, workdir: Path | None = None) -> tuple[pd.DataFrame, str, Path]:
    """Read any supported layout. Returns (sample table, format used, data root)."""
    if not str(data):
        raise BloodmlError("no data given; pass data=<folder, CSV or zip> (or a config with a data: entry).")
    data = Path(data).expanduser()
    if not data.exists():
        raise BloodmlError(f"{data}: no such file or folder; check the data= path.")
    if options.format not in FORMATS:
        raise BloodmlError(f"format='{options.format}' is unknown; use one of {', '.join(FORMATS)}.")
    if is_zip(data):
        data = extract_zip(data, workdir)
    elif data.is_file() and data.suffix.lower() != ".csv":
        raise BloodmlError(f"{data}: data must be a folder, a manifest .csv or a .zip; point data= at one.")
    fmt = detect_format(data, options) if options.format == "auto" else options.format
    try:
        table, root = _read_layout(data, fmt, options)
    except BloodmlError as error:
        hint = other_layout_hint(data, fmt, options)
        raise BloodmlError(f"{str(error).rstrip('.')}; {hint}" if hint else str(error)) from None
    return table, fmt, root


def _read_layout(data: Path, fmt: str, options: ReaderOptions) -> tuple[pd.DataFrame, Path]:
    if fmt == "manifest":
        csv_path = data if data.is_file() else None
        if csv_path is None:
            if options.manifest:
                csv_path = data / options.manifest
            else:
                csv_path = _find_label_csv(data)
        return read_manifest(csv_path, options), csv_path.parent
    if data.is_file():
        raise BloodmlError(f"{data}: format={fmt} needs a folder, not a file; point data= at the folder.")
    reader = {"wbc": read_wbc, "folders": read_folders}[fmt]
    return reader(data, options), data


def other_layout_hint(data: Path, fmt: str, options: ReaderOptions) -> str:
    """When a format given outright (often by a config file made for another dataset: experiments/wbc.yaml sets
    format=wbc) does not fit the folder but another layout does: how to let bloodml detect it."""
    if options.format == "auto" and not options.manifest:
        return ""
    try:
        detected = detect_format(data, replace(options, format="auto", manifest=""))
    except BloodmlError:
        return ""
    if detected == fmt:
        return ""
    auto = "" if options.manifest else ", or pass format=auto"  # an empty override cannot clear a config's manifest
    return (f"but this data looks like the {detected} layout: leave out the config file made for another dataset "
            f"(with mlflow run: -P config=){auto}.")


def _query(table: pd.DataFrame, query: str, csv_path: Path) -> pd.DataFrame:
    """The manifest rows matching a pandas query (e.g. "label != 'eosinophil' or eosinophil_granules == 'visible'")."""
    try:
        kept = table.query(query, engine="python")
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds; the user gets one line
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise BloodmlError(f"{csv_path}: manifest_query {query!r} failed ({first}); use column names of the CSV "
                           f"({', '.join(map(str, table.columns))}) and pandas query syntax.")
    if not len(kept):
        raise BloodmlError(f"{csv_path}: manifest_query {query!r} keeps no row; loosen it.")
    return kept.reset_index(drop=True)
