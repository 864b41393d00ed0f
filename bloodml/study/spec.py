"""The study file (experiments/*_study.yaml): dataset, fixed settings, factors and levels, protocol, questions.

Design: one factor at a time from a reference configuration, so each question compares configurations that
differ in that factor only, on the same folds (a paired design)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (AUGMENT_PRESETS, PARAMETERS, RECIPES, RunConfig, build_config, load_yaml, parameter_value,
                      replace)
from ..data.sources import is_collection, parse_sources
from ..errors import BloodmlError

LOSO = "leave_one_source_out"
FEW_SHOT = "few_shot"
PROTOCOLS = ("cv", "holdout", "cross_dataset", LOSO, FEW_SHOT)
SELECTIONS = ("random", "suggested")  # few_shot: how the labelled target cells are chosen
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "mcc")
# With group_column: one call per group (patient), scored per group; the report puts them first.
GROUP_METRICS = ("group_roc_auc", "group_balanced_accuracy", "group_accuracy", "group_sensitivity",
                 "group_specificity")


@dataclass(frozen=True)
class Configuration:
    name: str
    factors: dict[str, str]  # factor -> level name
    config: RunConfig
    control: bool = False


@dataclass(frozen=True)
class Question:
    name: str
    factor: str
    pairs: list[tuple[str, str]]  # (configuration a, configuration b): b - a is reported


@dataclass
class StudySpec:
    name: str
    base: RunConfig
    protocol: str
    folds: int
    repeats: int
    val_fraction: float
    metric: str
    configurations: list[Configuration] = field(default_factory=list)
    tests: list[str] = field(default_factory=list)  # cross_dataset: run configuration files of the test datasets
    hold_out: list[str] = field(default_factory=list)  # leave_one_source_out: the sources tested on (all: empty)
    target: str = ""  # few_shot: the run configuration file of the new instrument's dataset
    shots: list[int] = field(default_factory=list)  # few_shot: labelled target cells per class (0: not adapted)
    selections: list[str] = field(default_factory=list)  # few_shot: random and/or suggested
    questions: list[Question] = field(default_factory=list)
    refit: bool = False  # then train the best configuration on all the data (bloodml refit)
    source: str = ""  # the study file it was read from, and the run parameters given on top of it
    overrides: dict = field(default_factory=dict)


def _levels(factor: str, value: Any, source: str) -> dict[str, dict[str, Any]]:
    """A factor's levels as {level name: run parameters}. A list sets the parameter of the factor's name."""
    if isinstance(value, list):
        if factor not in PARAMETERS:
            raise BloodmlError(f"{source}: factor '{factor}' is not a run parameter; give its levels as a mapping "
                               f"of level name -> parameters.")
        levels = {str(level): {factor: level} for level in value}
    elif isinstance(value, dict):
        for level, params in value.items():
            if not isinstance(params, dict):
                raise BloodmlError(f"{source}: level '{level}' of factor '{factor}' needs a mapping of parameters.")
            unknown = [p for p in params if p not in PARAMETERS]
            if unknown:
                raise BloodmlError(f"{source}: level '{level}' sets unknown parameter '{unknown[0]}'.")
        levels = {str(k): dict(v) for k, v in value.items()}
    else:
        raise BloodmlError(f"{source}: factor '{factor}' needs a list of levels or a mapping of named levels.")
    for level, params in levels.items():  # each value as the run parameter takes it, the file and level named
        for name, param in params.items():
            parameter_value(name, param, f"{source}, level '{level}' of factor '{factor}'")
    return levels


def _name(factors: dict[str, str]) -> str:
    return "__".join(f"{k}={v}" for k, v in factors.items())


KNOWN_KEYS = {"name", "run", "settings", "protocol", "metric", "factors", "reference", "questions", "controls",
              "refit"}


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudySpec:
    """A study file, every value checked as it is read (one line naming the file and where the value is):
    the run configuration with the file's settings and ``overrides``, the protocol, the configurations (one factor
    varied at a time from the reference, plus controls) and the questions."""
    source = f"study {path}"
    content = load_yaml(path)
    unknown = set(content) - KNOWN_KEYS
    if unknown:
        raise BloodmlError(f"{source}: unknown key '{sorted(unknown)[0]}'; use {', '.join(sorted(KNOWN_KEYS))}.")
    settings, base = _base_config(path, content, overrides, source)
    spec = _protocol(path, content, base, source)
    factors, reference = _factors(content, source)
    controls = content.get("controls") or {}
    spec.configurations = _configurations(factors, reference, controls, settings, base)
    spec.questions = _questions(content, factors, reference, spec.configurations, source)
    spec.source, spec.overrides = str(Path(path).resolve()), dict(overrides or {})
    spec.refit = content.get("refit", False)
    if not isinstance(spec.refit, bool):
        raise BloodmlError(f"{source}: refit: {spec.refit!r} is not true or false.")
    if spec.refit and spec.protocol != "cv":
        raise BloodmlError(f"{source}: refit: true needs protocol cv (the estimate a refit carries is the "
                           f"cross-validation one).")
    return spec


def _base_config(path, content: dict, overrides: dict | None, source: str) -> tuple[dict, RunConfig]:
    """The study's settings (the file's, then ``overrides``) and the run configuration they make."""
    run_file = content.get("run")
    if run_file and not Path(run_file).is_file():
        candidate = Path(path).parent / Path(run_file).name
        run_file = str(candidate) if candidate.is_file() else run_file
    for name, value in (content.get("settings") or {}).items():  # the file's own values, the file named
        parameter_value(str(name), value, f"{source}, settings")
    settings = {**{k: str(v) for k, v in (content.get("settings") or {}).items()}, **(overrides or {})}
    return settings, build_config(run_file, settings)


def _protocol(path, content: dict, base: RunConfig, source: str) -> StudySpec:
    """The spec's protocol (cv, holdout or cross_dataset with its test datasets) and metric."""
    protocol = dict(content.get("protocol") or {})
    kind = protocol.get("type", "cv")
    if kind not in PROTOCOLS:
        raise BloodmlError(f"{source}: protocol type '{kind}' is unknown; use {', '.join(PROTOCOLS)}.")
    metric = content.get("metric", "macro_f1")
    if metric not in METRICS + GROUP_METRICS:
        raise BloodmlError(f"{source}: metric '{metric}' is unknown; use one of {', '.join(METRICS + GROUP_METRICS)}.")
    if metric in GROUP_METRICS and not base.group_column:
        raise BloodmlError(f"{source}: metric '{metric}' scores one call per group; set group_column (e.g. patient).")
    spec = StudySpec(name=str(content.get("name") or Path(path).stem), base=base, protocol=kind,
                     folds=int(protocol.get("folds", 5)), repeats=int(protocol.get("repeats", 3)),
                     val_fraction=float(protocol.get("val_fraction", 0.15)), metric=metric)
    if kind == "cross_dataset":  # train on the run file's data (its own hold-out split), test on other datasets
        spec.tests, spec.folds = _test_datasets(path, protocol, source), 1
    if kind == "holdout":
        spec.folds, spec.repeats = 1, 1
    if kind == LOSO:  # each listed source tested on, trained on the others; the data names several sources
        held = protocol.get("hold_out") or []
        spec.hold_out = [held] if isinstance(held, str) else [str(h) for h in held]
        if not is_collection(base.data):
            raise BloodmlError(f"{source}: protocol {LOSO} needs several sources in data= (a data collection or a "
                               f"comma list), not '{base.data}'.")
        spec.folds = len(spec.hold_out) or len(parse_sources(base.data))
    if kind == FEW_SHOT:  # a source model per draw, adapted with k labelled cells per class of the target
        _few_shot(path, protocol, spec, source)
    if spec.folds < 2 and kind == "cv":
        raise BloodmlError(f"{source}: folds must be at least 2 for cross-validation.")
    return spec


def _few_shot(path, protocol: dict, spec: StudySpec, source: str) -> None:
    """The few_shot protocol's target dataset, k values (per class) and selections; draws are its repeats."""
    spec.target = _test_datasets(path, {"test": protocol.get("target")}, source, "few_shot", "target")[0]
    shots = protocol.get("k", [0, 3, 5, 10])
    try:
        spec.shots = sorted({int(k) for k in ([shots] if isinstance(shots, (int, str)) else shots)})
    except (TypeError, ValueError):
        raise BloodmlError(f"{source}: protocol few_shot k: {shots!r} is not a list of whole numbers (cells per class).")
    if not spec.shots or spec.shots[0] < 0:
        raise BloodmlError(f"{source}: protocol few_shot k needs whole numbers >= 0 (cells per class), e.g. [0, 3, 5, 10].")
    selections = protocol.get("selection", list(SELECTIONS))
    spec.selections = [selections] if isinstance(selections, str) else [str(s) for s in selections]
    unknown = [s for s in spec.selections if s not in SELECTIONS]
    if unknown or not spec.selections:
        raise BloodmlError(f"{source}: protocol few_shot selection '{(unknown or [''])[0]}' is unknown; use "
                           f"{' and/or '.join(SELECTIONS)}.")
    spec.repeats = int(protocol.get("repeats", protocol.get("draws", 5)))
    spec.folds = 1
    if spec.repeats < 2:
        raise BloodmlError(f"{source}: protocol few_shot needs repeats >= 2 draws (paired verdicts need two).")


def _test_datasets(path, protocol: dict, source: str, kind: str = "cross_dataset", key: str = "test") -> list[str]:
    tests = protocol.get("test") or []
    tests = [tests] if isinstance(tests, str) else list(tests)
    if not tests:
        raise BloodmlError(f"{source}: protocol {kind} needs {key}: [<run config of another dataset>, ...].")
    resolved = []
    for test in tests:
        candidate = Path(test) if Path(test).is_file() else Path(path).parent / Path(test).name
        if not candidate.is_file():
            raise BloodmlError(f"{source}: test dataset config '{test}' not found; give a run configuration "
                               f"file (experiments/<name>.yaml).")
        resolved.append(str(candidate))
    return resolved


def _factors(content: dict, source: str) -> tuple[dict, dict[str, str]]:
    """The factors with their levels, and the reference level of each."""
    factors = {name: _levels(name, value, source) for name, value in (content.get("factors") or {}).items()}
    if not factors:
        raise BloodmlError(f"{source}: no factors; list at least one (e.g. masks: [none, cell]).")
    reference = {k: str(v) for k, v in (content.get("reference") or {}).items()}
    for factor, levels in factors.items():
        reference.setdefault(factor, next(iter(levels)))
        if reference[factor] not in levels:
            raise BloodmlError(f"{source}: reference level '{reference[factor]}' is not a level of '{factor}'.")
    return factors, reference


def _configuration(chosen: dict[str, str], factors: dict, settings: dict, base: RunConfig, control: bool = False,
                   extra: dict | None = None) -> Configuration:
    params: dict[str, Any] = {}
    for factor, level in chosen.items():
        params.update(factors.get(factor, {}).get(level, {}))  # a control's level is set by ``extra``
    params.update(extra or {})
    if "recipe" in params:  # a recipe level brings its preset; the file's settings and the command line win
        params = {**RECIPES[str(params["recipe"])], **settings, **params}
    if "augment_preset" in params:  # likewise an acquisition preset
        params = {**AUGMENT_PRESETS[str(params["augment_preset"])], **settings, **params}
    name = _name(chosen)
    return Configuration(name, dict(chosen), replace(base, **params, run_name=name), control)


def _configurations(factors: dict, reference: dict, controls: dict, settings: dict,
                    base: RunConfig) -> list[Configuration]:
    """The reference, each factor's other levels (one factor varied at a time), then the controls."""
    seen: dict[str, Configuration] = {}
    for chosen in [reference] + [{**reference, factor: level} for factor, levels in factors.items()
                                 for level in levels]:
        item = _configuration(chosen, factors, settings, base)
        seen.setdefault(item.name, item)
    if controls.get("background_only"):
        item = _configuration({**reference, "masks": "background"} if "masks" in factors else
                              {**reference, "control": "background_only"}, factors, settings, base, control=True,
                              extra={"masks": "background"})
        seen.setdefault(item.name, item)
    return list(seen.values())


def _questions(content: dict, factors: dict, reference: dict, configurations: list[Configuration],
               source: str) -> list[Question]:
    """Each question's pairs (reference vs each level, or consecutive levels with ``steps``), then the control's."""
    questions = []
    ref_name = _name(reference)
    for entry in content.get("questions") or [{"factor": f} for f in factors]:
        factor = entry.get("factor")
        if factor not in factors:
            raise BloodmlError(f"{source}: question factor '{factor}' is not one of the factors.")
        names = [_name({**reference, factor: level}) for level in factors[factor]]
        if entry.get("pairs"):  # the comparisons asked for, as [level a, level b]: b - a is reported
            pairs = []
            for pair in entry["pairs"]:
                if not isinstance(pair, list) or len(pair) != 2 or any(str(p) not in factors[factor] for p in pair):
                    raise BloodmlError(f"{source}: question pairs of '{factor}' need [level, level] of its levels "
                                       f"({', '.join(factors[factor])}); got {pair!r}.")
                pairs.append(tuple(_name({**reference, factor: str(p)}) for p in pair))
        elif entry.get("steps"):  # consecutive levels: does each added technique help?
            pairs = list(zip(names[:-1], names[1:]))
        else:
            pairs = [(ref_name, n) for n in names if n != ref_name]
        questions.append(Question(str(entry.get("name") or f"Does {factor} matter?"), factor, pairs))
    controls = [c.name for c in configurations if c.control]
    if controls:
        questions.append(Question("Background-only control: does the background alone predict the label?",
                                  "control", [(controls[0], ref_name)]))
    return questions
