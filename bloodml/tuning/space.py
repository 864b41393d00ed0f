"""Search spaces: which run parameters Optuna varies and over what range. YAML files in experiments/ replace
the default; every name must be a run parameter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from ..config import PARAMETERS, load_yaml, parameter_value
from ..errors import BloodmlError

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    # what the head sees
    "features": {"type": "categorical", "choices": ["final", "stages"]},
    # augmentation and balancing
    "rotation": {"type": "float", "low": 0.0, "high": 180.0},
    "shift": {"type": "float", "low": 0.0, "high": 0.2},
    "shear": {"type": "float", "low": 0.0, "high": 20.0},
    "zoom": {"type": "float", "low": 0.0, "high": 0.3},
    "hflip": {"type": "categorical", "choices": [True, False]},
    "vflip": {"type": "categorical", "choices": [True, False]},
    "brightness": {"type": "float", "low": 0.0, "high": 0.4},
    "balance": {"type": "categorical", "choices": ["none", "oversample", "weights"]},
    # acquisition: another instrument's colour, stain and sharpness
    "aug_gain": {"type": "float", "low": 0.0, "high": 0.4},
    "aug_hed": {"type": "float", "low": 0.0, "high": 0.1},
    "aug_grey": {"type": "float", "low": 0.0, "high": 0.6},
    "aug_blur": {"type": "float", "low": 0.0, "high": 2.0},
    # regularisation
    "l1": {"type": "float", "low": 1e-7, "high": 1e-2, "log": True},
    "l2": {"type": "float", "low": 1e-7, "high": 1e-2, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.6},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
}


def validate_space(space: dict, source: str) -> dict:
    if not isinstance(space, dict) or not space:
        raise BloodmlError(f"{source}: the search space must be a non-empty mapping of parameter: spec.")
    for name, spec in space.items():
        if name not in PARAMETERS:
            raise BloodmlError(f"{source}: '{name}' is not a run parameter; `bloodml params` lists them all.")
        if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
            raise BloodmlError(f"{source}: {name} needs type float, int or categorical, e.g. "
                               f"{{type: float, low: 0, high: 1}}.")
        # every choice and both bounds must be values the run parameter takes: a typo fails here, not in a trial
        if spec["type"] == "categorical":
            if not spec.get("choices"):
                raise BloodmlError(f"{source}: {name} is categorical and needs a non-empty choices list.")
            for choice in spec["choices"]:
                parameter_value(name, choice, source)
            continue
        if "low" not in spec or "high" not in spec:
            raise BloodmlError(f"{source}: {name} needs low < high.")
        low, high = (float(parameter_value(name, spec[bound], source)) for bound in ("low", "high"))
        if not low < high:
            raise BloodmlError(f"{source}: {name} needs low < high.")
        if spec.get("log") and low <= 0:
            raise BloodmlError(f"{source}: {name} has log: true and needs low > 0.")
    return space


def load_space(path: str | Path | None) -> dict:
    if not path:
        return DEFAULT_SPACE
    content = load_yaml(path)
    return validate_space(content.get("space", content), f"search space {path}")


def suggest(trial: optuna.Trial, space: dict) -> dict[str, Any]:
    values = {}
    for name, spec in space.items():
        if spec["type"] == "categorical":
            values[name] = trial.suggest_categorical(name, list(spec["choices"]))
        elif spec["type"] == "int":
            values[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        else:
            values[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return values
