"""How class probabilities become calls: the one rule every command uses (training's test evaluation, `evaluate`,
cross-dataset studies, `predict`, the served model, the champion's comparison and group calls).

A binary task calls its positive class where that class's probability is at or above ``threshold``; any other task
calls the most probable class. A group (a patient) is called the same way from its cells' pooled probability.
Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CallRule:
    """The settings that turn probabilities into calls, kept together: the positive class (index; binary tasks),
    its threshold, and how a group's cells are pooled into one call (``aggregate``, ``top_k``)."""

    positive: int | None = None
    threshold: float = 0.5
    aggregate: str = "mean"
    top_k: int = 5

    @classmethod
    def of_run(cls, config, classes: list[str]) -> "CallRule":
        """The rule a run configuration sets for these classes."""
        return cls(positive_index(config.positive_classes, classes), config.threshold, config.group_aggregate,
                   config.group_top_k)

    @classmethod
    def of_model(cls, meta: dict, aggregate: str = "") -> "CallRule":
        """The rule a logged model was trained with (its metadata; older models: the defaults); ``aggregate``
        overrides its group rule."""
        classes = list(meta.get("class_names", []))
        positive = meta.get("positive_class", "")
        return cls(classes.index(positive) if positive in classes else None, float(meta.get("threshold", 0.5)),
                   aggregate or meta.get("group_aggregate", "mean"), int(meta.get("group_top_k", 5)))

    def metadata(self, classes: list[str]) -> dict:
        """The rule as a model's metadata keys (read back by :meth:`of_model`)."""
        return {"threshold": self.threshold, "group_aggregate": self.aggregate, "group_top_k": self.top_k,
                "positive_class": classes[self.positive] if self.positive is not None else ""}


def positive_index(positive_classes: str, classes: list[str]) -> int | None:
    """Binary tasks: the class named by ``positive_classes`` (joined with '+' when several were grouped), else the
    second class in sorted order; None for other tasks."""
    if len(classes) != 2:
        return None
    name = "+".join(p.strip() for p in positive_classes.split(",") if p.strip())
    return classes.index(name) if name in classes else 1


def called(probabilities: np.ndarray, positive: int | None = None, threshold: float = 0.5) -> np.ndarray:
    """Calls (class indices, N) from class probabilities (N, C): for two classes, ``positive`` (default 1) where its
    probability is at or above ``threshold``, the other class elsewhere; for more, the most probable class."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim == 2 and probabilities.shape[1] == 2:
        positive = 1 if positive is None else positive
        return np.where(probabilities[:, positive] >= threshold, positive, 1 - positive)
    return probabilities.argmax(axis=1)
