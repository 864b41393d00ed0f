"""The patient model: one probability per patient from its cells and, optionally, its covariates.

Image evidence is a patient logit: the cells' probabilities pooled by a fixed rule (``mean``, ``logodds``, ``topk``,
``share``) or a gated attention pooling learnt over the cells' features (``attention``). ``inputs`` says what the
call rests on: ``image`` (the evidence alone), ``covariates`` (a logistic regression on the standardised
covariates alone) or ``both`` (a logistic regression on [image evidence, covariates]).

Stacking without leaking: the logistic regression of ``both`` learns how much to trust the image evidence, so it
is fitted on evidence the image model produced for patients it had *not* trained on (out-of-fold, as scikit-learn's
StackingClassifier does): the training patients fall into ``folds`` patient folds, the image model is trained
again on the others and scores each fold's patients. The image model that scores new patients is the one trained on
every training patient. Binary tasks only (the positive class of the run).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from ..errors import BloodmlError
from ..evaluation.groups import aggregate
from .attention import AttentionSettings, GatedAttentionPooling, attend, fit_attention
from .covariates import Standardiser

INPUTS = ("image", "covariates", "both")


@dataclass
class Patients:
    """One split's patients: IDs, each one's cell rows, the cells' probabilities (N, C), their plain features
    (N, D; attention) and training views (V, N, D; training patients), covariates (G, k) and truth (G,; 1 =
    positive), each when known."""

    groups: list[str]
    cells: list[np.ndarray]
    probabilities: np.ndarray
    features: torch.Tensor | None = None
    views: torch.Tensor | None = None
    covariates: np.ndarray | None = None
    positive: np.ndarray | None = None

    @classmethod
    def of(cls, group_ids, probabilities, features=None, views=None, covariates_of: Callable | None = None,
           truth=None, positive_class: int = 1) -> "Patients":
        """From per-cell group IDs (patients in order of first appearance); ``covariates_of(groups)`` gives their
        covariates; ``truth`` is each cell's class index."""
        group_ids = np.asarray([str(g) for g in group_ids], dtype=object)
        groups = list(dict.fromkeys(group_ids))
        cells = [np.flatnonzero(group_ids == g) for g in groups]
        positive = (np.array([int(np.bincount(np.asarray(truth)[c] == positive_class, minlength=2).argmax())
                              for c in cells]) if truth is not None else None)
        return cls(groups, cells, np.asarray(probabilities, dtype=np.float64), features, views,
                   covariates_of(groups) if covariates_of else None, positive)

    def subset(self, keep: np.ndarray) -> "Patients":
        """These patients only (``keep``: indices of patients), their cells renumbered."""
        rows = np.concatenate([self.cells[i] for i in keep]) if len(keep) else np.zeros(0, dtype=int)
        starts = np.cumsum([0] + [len(self.cells[i]) for i in keep])
        pick = torch.as_tensor(rows, dtype=torch.long)
        return Patients([self.groups[i] for i in keep], [np.arange(starts[k], starts[k + 1]) for k in range(len(keep))],
                        self.probabilities[rows],
                        self.features[pick] if self.features is not None else None,
                        self.views[:, pick] if self.views is not None else None,
                        self.covariates[keep] if self.covariates is not None else None,
                        self.positive[keep] if self.positive is not None else None)

    def bags(self, training: bool = False) -> list[torch.Tensor]:
        """Each patient's cell features: (views, N_i, D) for training, (N_i, D) for scoring."""
        if training:
            views = self.views if self.views is not None else self.features[None]
            return [views[:, torch.as_tensor(c, dtype=torch.long)].float() for c in self.cells]
        return [self.features[torch.as_tensor(c, dtype=torch.long)].float() for c in self.cells]


@dataclass
class PatientModel:
    inputs: str
    aggregate: str
    positive: int
    top_k: int = 5
    threshold: float = 0.5
    covariates: tuple[str, ...] = ()
    covariate_scale: Standardiser | None = None
    evidence_scale: Standardiser | None = None
    coef: list[float] = field(default_factory=list)
    intercept: float = 0.0
    attention: GatedAttentionPooling | None = None

    # --- image evidence ----------------------------------------------------------------------------------------
    def evidence(self, patients: Patients) -> np.ndarray:
        """Each patient's image logit (positive class)."""
        if self.aggregate == "attention":
            return attend(self.attention, patients.bags())[0]
        return pooled_logits(patients, self.aggregate, self.positive, self.top_k, self.threshold)

    def attention_weights(self, patients: Patients) -> list[np.ndarray]:
        return attend(self.attention, patients.bags())[1] if self.attention is not None else []

    # --- the call ------------------------------------------------------------------------------------------------
    def design(self, evidence: np.ndarray | None, patients: Patients) -> np.ndarray:
        columns = []
        if self.inputs in ("image", "both"):
            columns.append(self.evidence_scale.apply(evidence[:, None]) if self.evidence_scale else evidence[:, None])
        if self.inputs in ("covariates", "both"):
            columns.append(self.covariate_scale.apply(patients.covariates))
        return np.hstack(columns)

    def positive_probability(self, patients: Patients) -> np.ndarray:
        evidence = self.evidence(patients) if self.inputs != "covariates" else None
        if self.inputs == "image":
            return 1 / (1 + np.exp(-evidence))
        z = self.design(evidence, patients) @ np.asarray(self.coef) + self.intercept
        return 1 / (1 + np.exp(-z))

    def probabilities(self, patients: Patients, classes: int = 2) -> np.ndarray:
        """(G, 2): each patient's class probabilities."""
        p = self.positive_probability(patients)
        out = np.zeros((len(p), classes))
        out[:, self.positive], out[:, 1 - self.positive] = p, 1 - p
        return out

    # --- saved with the run ------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        facts = {"inputs": self.inputs, "aggregate": self.aggregate, "positive": self.positive, "top_k": self.top_k,
                 "threshold": self.threshold, "covariates": list(self.covariates),
                 "covariate_scale": asdict(self.covariate_scale) if self.covariate_scale else None,
                 "evidence_scale": asdict(self.evidence_scale) if self.evidence_scale else None,
                 "coef": list(map(float, self.coef)), "intercept": float(self.intercept),
                 "attention": ({"features": self.attention.features, "hidden": self.attention.hidden}
                               if self.attention is not None else None)}
        (folder / "patient_model.json").write_text(json.dumps(facts, indent=2))
        if self.attention is not None:
            torch.save(self.attention.state_dict(), folder / "attention.pt")

    @classmethod
    def load(cls, folder: Path) -> "PatientModel":
        facts = json.loads((folder / "patient_model.json").read_text())
        attention = None
        if facts["attention"]:
            attention = GatedAttentionPooling(facts["attention"]["features"], facts["attention"]["hidden"])
            attention.load_state_dict(torch.load(folder / "attention.pt", weights_only=True))
            attention.eval()
        scale = {k: Standardiser(**facts[k]) if facts[k] else None for k in ("covariate_scale", "evidence_scale")}
        return cls(facts["inputs"], facts["aggregate"], facts["positive"], facts["top_k"], facts["threshold"],
                   tuple(facts["covariates"]), scale["covariate_scale"], scale["evidence_scale"], facts["coef"],
                   facts["intercept"], attention)

    def describe(self) -> str:
        evidence = f"{self.aggregate} of the cells" if self.aggregate != "attention" else "attention over the cells"
        if self.inputs == "image":
            return f"patient call: {evidence}"
        terms = (["image"] if self.inputs == "both" else []) + list(self.covariates)
        return (f"patient call: logistic regression on " + ", ".join(
            f"{t} {c:+.2f}" for t, c in zip(terms, self.coef)) + (f" (image evidence: {evidence}, out-of-fold)"
                                                                   if self.inputs == "both" else ""))


def pooled_logits(patients: Patients, rule: str, positive: int, top_k: int, threshold: float) -> np.ndarray:
    p = np.array([aggregate(patients.probabilities[c], rule, top_k, threshold, positive)[positive]
                  for c in patients.cells])
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def fit_patient_model(train: Patients, inputs: str, rule: str, positive: int, top_k: int = 5, threshold: float = 0.5,
                      covariates: tuple[str, ...] = (), attention: AttentionSettings = AttentionSettings(),
                      retrained_cell_probabilities: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                      folds: int = 5, seed: int = 0) -> PatientModel:
    """Fit on the training patients. ``retrained_cell_probabilities(train_cells, held_cells)``: the cell model
    trained again on the first rows' cells, its probabilities for the second's (the out-of-fold evidence of a fixed
    rule under ``both``)."""
    if inputs not in INPUTS:
        raise BloodmlError(f"group_inputs={inputs}: unknown; use one of {', '.join(INPUTS)}.")
    model = PatientModel(inputs, rule, positive, top_k, threshold, tuple(covariates))
    if rule == "attention":
        model.attention = fit_attention(train.bags(training=True), train.positive, attention)
    if inputs == "image":
        return model
    y = train.positive
    columns = []
    if inputs == "both":
        evidence = out_of_fold_evidence(train, model, attention, retrained_cell_probabilities, folds, seed)
        model.evidence_scale = Standardiser.fit(evidence[:, None])
        columns.append(model.evidence_scale.apply(evidence[:, None]))
    model.covariate_scale = Standardiser.fit(train.covariates)
    columns.append(model.covariate_scale.apply(train.covariates))
    regression = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000).fit(np.hstack(columns), y)
    model.coef, model.intercept = list(map(float, regression.coef_[0])), float(regression.intercept_[0])
    return model


def out_of_fold_evidence(train: Patients, model: PatientModel, settings: AttentionSettings,
                         retrained: Callable | None, folds: int, seed: int) -> np.ndarray:
    """Each training patient's image logit from an image model that did not train on it."""
    y = train.positive
    folds = max(2, min(folds, int(np.bincount(y, minlength=2).min())))
    evidence = np.zeros(len(y))
    for fit_rows, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        fitted, scored = train.subset(fit_rows), train.subset(held)
        if model.aggregate == "attention":
            inner = fit_attention(fitted.bags(training=True), fitted.positive, settings)
            evidence[held] = attend(inner, scored.bags())[0]
        else:
            cells = lambda rows: np.concatenate([train.cells[i] for i in rows])  # noqa: E731
            scored.probabilities = retrained(cells(fit_rows), cells(held))
            evidence[held] = pooled_logits(scored, model.aggregate, model.positive, model.top_k, model.threshold)
    return evidence
