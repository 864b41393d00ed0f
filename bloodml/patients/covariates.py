"""Patient covariates: a patients table (one row per patient, e.g. ``patients.csv``) joined on the group column.

``group_covariates=patients.csv:lymph_count,year_of_birth`` names the table and the numeric columns to use. A
relative path is looked up in the working folder, then in the data folder. Values are standardised on the training
patients only (:class:`Standardiser`). Missing patients, empty or non-numeric values and a table without the group
column are refused in one line that names the file and the fix; patients the table lists beyond the cells' are
harmless (the caller says so). Pure pandas.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BloodmlError


@dataclass(frozen=True)
class CovariateSpec:
    path: Path
    columns: tuple[str, ...]

    def text(self) -> str:
        return f"{self.path}:{','.join(self.columns)}"


def parse_covariates(text: str, data_root: str | Path | None = None) -> CovariateSpec | None:
    """``<csv>:<col>,<col>`` -> the table's path (the working folder first, then ``data_root``) and its columns;
    None for an empty text."""
    text = (text or "").strip()
    if not text:
        return None
    path_text, sep, columns_text = text.rpartition(":")
    columns = tuple(c.strip() for c in columns_text.split(",") if c.strip())
    if not sep or not path_text or not columns:
        raise BloodmlError(f"group_covariates={text}: write it as <patients table .csv>:<column>,<column>, e.g. "
                           f"patients.csv:lymph_count,year_of_birth.")
    path = Path(path_text).expanduser()
    if not path.is_absolute() and not path.is_file() and data_root is not None:
        beside = Path(data_root) / path
        path = beside if beside.is_file() else path
    if not path.is_file():
        raise BloodmlError(f"group_covariates: {path_text} is not a file (looked in the working folder"
                           + (f" and in {data_root}" if data_root is not None else "")
                           + "); give the patients table's path.")
    return CovariateSpec(path.resolve(), columns)


def read_covariates(spec: CovariateSpec, group_column: str, groups) -> pd.DataFrame:
    """The covariates (float columns ``spec.columns``) of ``groups``, in their order, from the patients table."""
    try:
        table = pd.read_csv(spec.path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise BloodmlError(f"{spec.path}: cannot be read as a CSV ({str(exc).splitlines()[0]}); save it as a CSV "
                           f"with one row per patient.")
    table.columns = [str(c).strip() for c in table.columns]
    if group_column not in table.columns:
        raise BloodmlError(f"{spec.path}: no '{group_column}' column (the group column, one row per patient); it "
                           f"has {', '.join(table.columns) or 'no columns'}: add it or rename the column.")
    missing_columns = [c for c in spec.columns if c not in table.columns]
    if missing_columns:
        raise BloodmlError(f"{spec.path}: no column {', '.join(repr(c) for c in missing_columns)}; it has "
                           f"{', '.join(table.columns)}: fix group_covariates.")
    table[group_column] = table[group_column].str.strip()
    doubled = table[group_column][table[group_column].duplicated()]
    if len(doubled):
        raise BloodmlError(f"{spec.path}: patient {doubled.iloc[0]} has {int((table[group_column] == doubled.iloc[0]).sum())} "
                           f"rows; keep one row per patient.")
    table = table.set_index(group_column)
    wanted = [str(g).strip() for g in groups]
    absent = [g for g in dict.fromkeys(wanted) if g not in table.index]
    if absent:
        raise BloodmlError(f"{spec.path}: patient {absent[0]} is not in the table"
                           + (f" (nor {len(absent) - 1} other(s))" if len(absent) > 1 else "")
                           + f"; add a row for every patient whose cells are scored.")
    rows = table.loc[wanted, list(spec.columns)]
    out = pd.DataFrame(index=pd.Index(wanted, name=group_column))
    for column in spec.columns:
        text = rows[column].str.strip()
        values = pd.to_numeric(text, errors="coerce")
        bad = values.isna()
        if bad.any():
            patient, value = text.index[bad.to_numpy()][0], text[bad.to_numpy()].iloc[0]
            what = "is empty" if value == "" else f"is '{value}', not a number"
            raise BloodmlError(f"{spec.path}: {column} of patient {patient} {what}; fill in a number (or leave the "
                               f"column out of group_covariates).")
        out[column] = values.to_numpy(dtype=np.float64)
    return out


def unlisted_note(spec: CovariateSpec, group_column: str, groups) -> str:
    """A one-line note for patients the table lists that have no cells here (harmless: not used)."""
    table = pd.read_csv(spec.path, dtype=str, keep_default_na=False)
    listed = set(table[group_column].str.strip()) - {str(g).strip() for g in groups}
    return (f"{spec.path.name} lists {len(listed)} patient(s) without cells here; they are not used" if listed else "")


@dataclass(frozen=True)
class Standardiser:
    """Centre and scale, fitted on the training patients only (a constant column keeps scale 1)."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, values: np.ndarray) -> "Standardiser":
        values = np.asarray(values, dtype=np.float64)
        scale = values.std(0)
        return cls(tuple(values.mean(0)), tuple(np.where(scale > 0, scale, 1.0)))

    def apply(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - np.array(self.mean)) / np.array(self.scale)
