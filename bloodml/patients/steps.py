"""A training run's patient model, as steps the trainer calls: the splits' patients (cells' probabilities, frozen
features, covariates) -> the patient model fitted on the training patients -> each split's patient probabilities
(for the one scoring path) -> artefacts (the model, the attention weights as a CSV and a contact sheet)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..compute import CPU, Compute
from ..config import RunConfig, patient_inputs, section
from ..errors import BloodmlError
from ..evaluation.calls import positive_index
from ..runtime import say
from ..training.loop import HeadTrainer, TrainSettings, fit
from .attention import AttentionSettings
from .covariates import parse_covariates, read_covariates, unlisted_note
from .model import PatientModel, Patients, fit_patient_model
from .sheet import attention_sheet


def needs_patient_model(config: RunConfig) -> bool:
    """A fixed pooling of the cells needs none; a learnt pooling or covariates do."""
    return bool(config.group_column) and (config.group_aggregate == "attention" or patient_inputs(config) != "image")


@dataclass
class RunPatients:
    model: PatientModel
    patients: dict[str, Patients]  # split -> its patients
    pooled: dict[str, dict]  # split -> {patient: class probabilities}


def check_patients(config: RunConfig, table: pd.DataFrame, classes: list[str], data_root) -> None:
    """Before any run opens: a patient model needs two classes and, with covariates, every patient's row."""
    if not needs_patient_model(config):
        return
    if len(classes) != 2:
        raise BloodmlError(f"group_aggregate=attention and group_covariates call a patient positive or not: the task "
                           f"has {len(classes)} classes ({', '.join(classes)}); set positive_classes to make it two.")
    spec = parse_covariates(config.group_covariates, data_root)
    if spec is not None:
        read_covariates(spec, config.group_column, table["source_group"].astype(str).unique())


def covariates_reader(config: RunConfig, data_root) -> Callable | None:
    spec = parse_covariates(config.group_covariates, data_root)
    if spec is None:
        return None
    return lambda groups: read_covariates(spec, config.group_column, groups).to_numpy()


def fit_run_patients(config: RunConfig, classes: list[str], sets: dict, groups: dict[str, np.ndarray],
                     features, train_views: torch.Tensor, cell_probabilities: Callable[[str], np.ndarray],
                     new_head: Callable, best_epoch: int, data_root, compute: Compute = CPU) -> RunPatients:
    """``features``: the run's FrozenFeatures; ``train_views`` (V, N, D) the training views the head learnt from;
    ``cell_probabilities(split)`` the trained model's; ``new_head()`` an untrained head like the run's."""
    if len(classes) != 2:
        raise BloodmlError(f"group_aggregate=attention and group_covariates call a patient positive or not: the task "
                           f"has {len(classes)} classes ({', '.join(classes)}); set positive_classes to make it two.")
    positive = positive_index(config.positive_classes, classes)
    covariates_of = covariates_reader(config, data_root)
    if covariates_of is not None:
        note = unlisted_note(parse_covariates(config.group_covariates, data_root), config.group_column,
                             np.concatenate([groups[s] for s in groups]))
        if note:
            say(f"note: {note}")
    plain = {s: features.of(sets[s].images, sets[s].regions, desc=f"features {s}").float().cpu()
             for s in sets if len(sets[s])}
    patients = {}
    for split in plain:
        probabilities = cell_probabilities(split) if split != "train" else np.zeros((len(sets[split]), 2))
        patients[split] = Patients.of(groups[split], probabilities, plain[split],
                                      train_views.float().cpu() if split == "train" else None, covariates_of,
                                      sets[split].labels.numpy(), positive)
    train_labels = sets["train"].labels

    def retrained(fit_rows: np.ndarray, held_rows: np.ndarray) -> np.ndarray:
        """The cell head trained again, as the run trained it (to its best epoch), on some training patients'
        cells; its probabilities for the others'."""
        head = new_head()
        settings = replace(section(config, TrainSettings), epochs=max(best_epoch, 1), patience=0)
        rows = torch.as_tensor(fit_rows, dtype=torch.long)
        trainer = HeadTrainer(head, train_views[:, rows], train_labels[rows], torch.zeros(0, train_views.shape[-1]),
                              torch.zeros(0, dtype=torch.long), len(classes), settings, compute)
        fit(trainer, settings)
        with torch.no_grad():
            logits = head.eval()(compute.put(plain["train"][torch.as_tensor(held_rows, dtype=torch.long)]))
        return torch.softmax(logits.float().cpu(), dim=1).numpy()

    model = fit_patient_model(patients["train"], patient_inputs(config), config.group_aggregate, positive,
                              config.group_top_k, config.threshold,
                              tuple(parse_covariates(config.group_covariates, data_root).columns)
                              if config.group_covariates else (),
                              AttentionSettings(seed=config.seed), retrained, seed=config.seed)
    say(model.describe())
    pooled = {s: dict(zip(p.groups, model.probabilities(p))) for s, p in patients.items() if s != "train"}
    return RunPatients(model, patients, pooled)


def attention_rows(run: RunPatients, split: str, paths: list[str]) -> pd.DataFrame:
    """Each cell of the split's patients with its attention weight and its rank within its patient."""
    patients = run.patients.get(split)
    if patients is None or run.model.attention is None:
        return pd.DataFrame()
    rows = []
    for group, cells, weights in zip(patients.groups, patients.cells, run.model.attention_weights(patients)):
        order = np.argsort(-weights)
        rank = np.empty(len(order), dtype=int)
        rank[order] = np.arange(1, len(order) + 1)
        rows += [{"split": split, "patient": group, "image": paths[c], "attention": float(w), "rank": int(r)}
                 for c, w, r in zip(cells, weights, rank)]
    return pd.DataFrame(rows)


def write_patient_artefacts(run: RunPatients, sets: dict, paths: dict[str, list[str]], out: Path,
                            plots: bool) -> None:
    """The attention weights of every validation and test cell (``attention.csv``) and, with plots, a sheet of
    each test patient's most and least attended cells (``attention_test.png``)."""
    tables = [attention_rows(run, s, paths[s]) for s in ("val", "test")]
    table = pd.concat([t for t in tables if len(t)], ignore_index=True) if any(len(t) for t in tables) else None
    if table is None:
        return
    table.to_csv(out / "attention.csv", index=False)
    if plots and "test" in run.patients:
        patients = run.patients["test"]
        attention_sheet(patients, run.model.attention_weights(patients), sets["test"].images,
                        run.model.positive_probability(patients), out / "attention_test.png")
