"""Several datasets in one run: ``data=`` as a comma list (``wbc-zheng2018,../shared/data/pbc``) or as a small YAML
collection that gives each dataset (a *source*) its layout options, a label map to common class names and an
optional cap per class. Reading and labelling each source is the data pipeline's (splitting/prepare.py); here are
the collection itself, the label maps and the checks across sources. Errors are one line naming the file or source.

A collection file::

    sources:
      - name: pbc                     # how metrics, datasets and the split manifest call it
        data: ../shared/data/pbc      # relative to this file (or a catalog name)
        labels: {immature_granulocyte: drop, erythroblast: drop, platelet: drop}
        max_per_class: 300            # a seeded sample per class (0: all)
      - name: bccd
        data: ../shared/data/bccd/cells.csv
        labels: {basophil: drop}
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from ..errors import BloodmlError

# The data parameters a source may set for itself (the rest of the run's parameters are the run's).
SOURCE_OPTIONS = ("format", "manifest", "manifest_query", "image_column", "label_column", "mask_column",
                  "group_column", "masks_dir", "image_suffix", "mask_suffix", "class_names")
# Layout options that belong to one dataset: in a comma list every source starts from their defaults.
LAYOUT_OPTIONS = ("format", "manifest", "manifest_query", "mask_column", "masks_dir", "image_suffix", "mask_suffix",
                  "class_names")
DROP = "drop"
ENTRY_KEYS = {"name", "data", "labels", "max_per_class", *SOURCE_OPTIONS}


@dataclass(frozen=True)
class Source:
    name: str
    data: str
    options: dict = field(default_factory=dict)  # data parameters of this source (SOURCE_OPTIONS)
    labels: dict = field(default_factory=dict)  # label -> common name, or None to drop it
    max_per_class: int = 0
    where: str = ""  # the collection file and entry, for error lines


def is_collection(data: str) -> bool:
    """Whether ``data=`` names several sources: a comma list or a YAML collection file."""
    text = str(data).strip()
    return "," in text or text.lower().endswith((".yaml", ".yml"))


def source_name(data: str) -> str:
    """A source's default name: a catalog name as given, else the folder's name (a file: its folder's name, or
    the file's stem where the folder holds several datasets' files)."""
    path = Path(str(data).rstrip("/"))
    if path.suffix.lower() in (".csv", ".zip"):
        return path.stem if path.suffix.lower() == ".zip" else path.parent.name or path.stem
    return path.name or str(data)


def parse_sources(data: str) -> list[Source]:
    """The sources ``data=`` names, in order, each with a distinct name."""
    text = str(data).strip()
    if text.lower().endswith((".yaml", ".yml")):
        sources = _collection(Path(text))
    else:
        parts = [part.strip() for part in text.split(",")]
        if any(not part for part in parts):
            raise BloodmlError(f"data='{text}': an empty entry in the comma list; write data=<first>,<second>.")
        sources = [Source(source_name(part), part, where=f"data='{text}'") for part in parts]
    names = [s.name for s in sources]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BloodmlError(f"{sources[0].where}: two sources are called '{repeated[0]}'; give each a name (in a data "
                           f"collection: name: <source name>).")
    return sources


def _collection(path: Path) -> list[Source]:
    if not path.is_file():
        raise BloodmlError(f"data collection {path}: file not found; fix data=.")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise BloodmlError(f"data collection {path}: not valid YAML; fix the syntax (see docs/guides/public-data.md).")
    entries = content.get("sources") if isinstance(content, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BloodmlError(f"data collection {path}: needs 'sources:', a list of entries with data: <dataset>; see "
                           f"docs/guides/public-data.md.")
    return [_entry(path, index, entry) for index, entry in enumerate(entries, 1)]


def _entry(path: Path, index: int, entry) -> Source:
    where = f"data collection {path}, source {index}"
    if isinstance(entry, str):
        entry = {"data": entry}
    if not isinstance(entry, dict) or not entry.get("data"):
        raise BloodmlError(f"{where}: needs data: <folder, manifest .csv, .zip or dataset name>.")
    unknown = sorted(set(entry) - ENTRY_KEYS)
    if unknown:
        raise BloodmlError(f"{where}: unknown key '{unknown[0]}'; use {', '.join(sorted(ENTRY_KEYS))}.")
    data = str(entry["data"])
    relative = path.parent / data
    if not Path(data).is_absolute() and relative.exists():
        data = str(relative)
    name = str(entry.get("name") or source_name(data))
    where = f"data collection {path}, source {name}"
    labels = entry.get("labels") or {}
    if not isinstance(labels, dict):
        raise BloodmlError(f"{where}: labels must map a class to its common name or to drop, e.g. labels: "
                           f"{{Lymphocyte: lymphocyte, platelet: drop}}.")
    cap = entry.get("max_per_class", 0)
    if not isinstance(cap, int) or cap < 0:
        raise BloodmlError(f"{where}: max_per_class={cap!r} must be a whole number of images (0: all).")
    options = {key: str(entry[key]) for key in SOURCE_OPTIONS if key in entry}
    return Source(name, data, options,
                  {str(k): None if v is None or str(v).lower() == DROP else str(v) for k, v in labels.items()},
                  cap, where)


def apply_label_map(table: pd.DataFrame, source: Source) -> tuple[pd.DataFrame, list[str]]:
    """The source's labels under their common names; classes mapped to ``drop`` left out (with a note). A label
    map naming a class the source does not have is refused: it is a typo or the wrong source."""
    if not source.labels:
        return table, []
    present = set(table["label"])
    unknown = [label for label in source.labels if label not in present]
    if unknown:
        raise BloodmlError(f"{source.where}: the label map names '{unknown[0]}', which is not a class of this source "
                           f"(its classes: {', '.join(sorted(present))}); fix the name or remove the entry.")
    dropped = [label for label, name in source.labels.items() if name is None]
    kept = table.loc[~table["label"].isin(dropped)]
    notes = [f"source {source.name}: left out the classes " + ", ".join(
        f"{label} ({int((table['label'] == label).sum())})" for label in dropped) + " (label map: drop)"] if dropped \
        else []
    mapped = kept.assign(label=kept["label"].map(lambda v: source.labels.get(v) or v))
    return mapped.reset_index(drop=True), notes


def sample_per_class(table: pd.DataFrame, source: Source, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """At most ``max_per_class`` images of each class, a seeded sample taken in path order (the same every run)."""
    if not source.max_per_class:
        return table, []
    keep: list[int] = []
    capped = []
    for label, rows in table.sort_values("path").groupby("label", sort=True):
        index = list(rows.index)
        if len(index) > source.max_per_class:
            index = sorted(random.Random(f"{seed}|{source.name}|{label}").sample(index, source.max_per_class))
            capped.append(label)
        keep += index
    note = (f"source {source.name}: a seeded sample of {source.max_per_class} images per class for "
            f"{', '.join(capped)} (max_per_class)") if capped else ""
    return table.loc[sorted(keep)].reset_index(drop=True), [note] if note else []


def _folded(label: str) -> str:
    """A class name as two spellings of one class compare: case, separators and a plural 's' ignored."""
    key = re.sub(r"[^0-9a-z]", "", label.casefold())
    return key[:-1] if key.endswith("s") and len(key) > 3 else key


def check_across(tables: dict[str, pd.DataFrame], sources: list[Source]) -> None:
    """Refuse a source left with no images, two sources that spell one class two ways (``Neutrophil`` and
    ``neutrophils``: the same name once case, separators and a plural are ignored), and a source whose classes are
    number codes beside sources that name theirs."""
    where = sources[0].where.rsplit(", source", 1)[0]
    for source in sources:
        if not len(tables[source.name]):
            raise BloodmlError(f"{where}: source {source.name} has no usable images left (after its label map and "
                               f"the classes it drops); check its data= and labels:, or remove it.")
    spelled: dict[str, tuple[str, str]] = {}
    for source in sources:
        for label in sorted(set(tables[source.name]["label"])):
            folded = _folded(label)
            if folded in spelled and spelled[folded][0] != label:
                other, first = spelled[folded]
                raise BloodmlError(f"{where}: sources {first} and {source.name} spell one class two ways ('{other}' "
                                   f"and '{label}'); map one to the other with a label map in a data collection "
                                   f"(labels: {{{label}: {other}}}; docs/guides/public-data.md).")
            spelled.setdefault(folded, (label, source.name))
    coded = [s.name for s in sources if all(re.fullmatch(r"\d+", v) for v in set(tables[s.name]["label"]))]
    if coded and len(coded) < len(sources):
        labels = ", ".join(sorted(set(tables[coded[0]]["label"]))[:4])
        raise BloodmlError(f"{where}: source {coded[0]} labels its classes by number ({labels}) while the others "
                           f"name them; give it class_names (e.g. class_names: '1=neutrophil,2=lymphocyte') or a "
                           f"label map in a data collection.")
