"""The declared order of bloodml's packages and modules, lowest first: a unit may import units of its own layer
(never in a circle) and of the layers below, never one above. tests/test_architecture.py parses every import and
holds the code to it, and checks that docs/architecture.md shows this order. Only ``tracking`` imports MLflow."""

LAYERS: list[tuple[tuple[str, ...], str]] = [
    (("errors", "environment", "runtime", "parallel", "compute", "config", "confusion"),
     "base: errors, the Python check, threads and seeds, torchrun's processes, the device, the run configuration, "
     "confusion-matrix scores"),
    (("data",), "read a dataset: layouts, images, masks, labels, archives, fetch"),
    (("splitting",), "content hashes, copies, splits, audit; prepare = the data pipeline of a run"),
    (("inputs",), "what the network sees: InputSpec, transforms, stain, acquisition, the preloaded sets"),
    (("models",), "backbones (one registry), heads, the classifier, AdaBN"),
    (("cache",), "the content-keyed feature cache"),
    (("training",), "fitting: a head on frozen features, fine-tuning, early stopping, checkpoints"),
    (("evaluation",), "the one scoring path: calls, metrics with intervals, groups, calibration, plots, report"),
    (("patients",), "the patient model: covariates, attention pooling, stacked patient calls"),
    (("tracking",), "MLflow, and only here: store, runs, models, registry, pyfunc"),
    (("segmentation",), "the cell segmenter: a model like any other"),
    (("serving",), "the served image model: image bytes in, class names out"),
    (("predict", "evaluate", "train", "segment", "pretrain", "adapt", "suggest", "refit", "demo"), "commands, each a short list of named steps"),
    (("study", "tuning"), "built from many runs: studies, Optuna"),
    (("cli",), "a thin click layer"),
]

# Pairs that must not import each other in either direction, whatever the order allows.
APART: list[tuple[str, str]] = [("training", "evaluation")]

MLFLOW_ONLY_IN = "tracking"


def markdown() -> str:
    """The order as docs/architecture.md shows it, lowest first."""
    return "\n".join(f"{i}. {', '.join(f'`{u}`' for u in units)}: {job}"
                     for i, (units, job) in enumerate(LAYERS, 1)) + "\n"
