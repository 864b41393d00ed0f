"""The trained model in MLflow: logged so that mlflow.pytorch.load_model and pyfunc predict work in a fresh
process, with its input specification and class names as metadata and a hash of its files; loaded back with
that hash checked."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import timm
import torch
import torchvision
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from ..errors import BloodmlError
from ..data.checksums import file_sha256
from ..inputs.input_spec import InputSpec
from ..models.classifier import BloodCellClassifier
from ..models.head import head_for
from ..models.registry import create_backbone
from .registry import model_uri, source_run

HASH_TAG = "bloodml.model_sha256"
SEGMENTER = "segmenter"  # metadata bloodml_kind of a segmenter
# Written by MLflow into the model folder when a version is registered: bookkeeping, not model content.
UNHASHED = {"registered_model_meta"}
# The classifier's weights beside its PT2 graph, as a run artefact whose SHA-256 the model's metadata records (so
# the model's own hash covers them, and neither the model folder nor the served image_model carries them): the
# module is rebuilt from the registry and these weights where the graph cannot serve (AdaBN re-estimates
# batch-norm statistics, which a PT2 graph in eval form has frozen).
WEIGHTS = "model_weights/state_dict.pt"


def model_metadata(model: BloodCellClassifier, extra: dict | None = None) -> dict:
    return {"class_names": list(model.class_names), "input_spec": model.spec.to_dict(),
            "input": "float32 RGB in [0,1], shape (N,3,S,S), resized and masked as input_spec says",
            "output": "class probabilities (N,C) in class_names order", **(extra or {})}


def log_model(model: BloodCellClassifier, example: torch.Tensor, extra_metadata: dict | None = None):
    """Log as a PT2 graph (``torch.export``: loading runs no pickled code) with signature, input example,
    explicit requirements (no inference subprocess) and the input specification/class names as metadata."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / Path(WEIGHTS).name
        torch.save(model.state_dict(), state)
        weights = {"weights": {"artifact": WEIGHTS, "sha256": file_sha256(state)}}
        # MLflow's serving check of the input example is left to the image_model logged next, which loads and
        # runs this same graph (about 2 s saved per run for a resnet50)
        info = _log_pt2(model, "model", example, model_metadata(model, {**(extra_metadata or {}), **weights}),
                        validate=False)
        mlflow.log_artifact(str(state), str(Path(WEIGHTS).parent))
    return info


def _log_pt2(model, name: str, example: torch.Tensor, metadata: dict, validate: bool = True):
    """A model as a PT2 graph at artifact ``name``, with signature, input example, pinned requirements and
    metadata; the SHA-256 of what the store holds is recorded as a run tag (checked when loading). ``validate``:
    MLflow loads the logged model back and serves it its input example."""
    model = model.eval()
    example_np = example[:2].numpy().astype(np.float32)
    with torch.no_grad():
        output = model(example[:2]).numpy()
    info = mlflow.pytorch.log_model(
        model, name=name, signature=infer_signature(example_np, output), input_example=example_np,
        pip_requirements=network_requirements(), serialization_format="pt2", metadata=metadata,
        validate_serving_input=validate,
    )
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=tmp)
        mlflow.set_tag(HASH_TAG, directory_sha256(Path(local)))
    return info


def network_requirements() -> list[str]:
    """The pinned packages a logged PT2 network needs (no inference subprocess resolves them)."""
    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
            f"timm=={timm.__version__}", f"numpy=={np.__version__}"]


def directory_sha256(folder: Path) -> str:
    """SHA-256 over every file's relative path and bytes (sorted), so any changed, added or removed file shows."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in UNHASHED):
        digest.update(str(path.relative_to(folder)).encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def log_segmenter(model, example: torch.Tensor, metadata: dict):
    """A segmenter, logged like a classifier (PT2, signature, requirements, hash) with ``bloodml_kind`` =
    ``segmenter`` in its metadata: input float32 RGB in [0,1] (N,3,S,S), output region logits (N,3,S,S)."""
    return _log_pt2(model, "segmenter", example,
                    {"bloodml_kind": SEGMENTER, "input": "float32 RGB in [0,1], shape (N,3,S,S)",
                     "output": "logits (N,3,S,S) over background, cytoplasm, nucleus", **metadata})


def load_segmenter(reference: str):
    """(pyfunc model, metadata) of a segmenter; anything else is refused with one line."""
    model, meta = _load(reference, "segmenter")
    if meta.get("bloodml_kind") != SEGMENTER:
        kind = "a classifier" if "class_names" in meta else "not a bloodml segmenter"
        raise BloodmlError(f"masks_from=model:{reference}: that model is {kind}, not a segmenter; train one with "
                           f"'bloodml segment --data <folder with masks>' and pass its runs:/<id>/segmenter or "
                           f"models:/<name>@<alias>.")
    return model, meta


def load_model(reference: str, network: bool = False):
    """A classifier: (pyfunc model, its metadata); a segmenter or foreign model is refused with one line. With
    ``network``, (torch module rebuilt from its logged weights, its metadata) instead."""
    model, meta = _load(reference, "model", network)
    if meta.get("bloodml_kind") == SEGMENTER:
        raise BloodmlError(f"model '{reference}' is a segmenter, not a classifier; pass it as "
                           f"--masks_from model:{reference} instead.")
    if "class_names" not in meta:
        raise BloodmlError(f"model '{reference}' was not trained by bloodml (no class names in its metadata).")
    return model, meta


def _load(reference: str, artifact: str, network: bool = False):
    """Download a bloodml model, check its files against the hash recorded at training time, then load it.
    Returns (pyfunc model, its metadata); with ``network``, the torch module instead of the pyfunc model."""
    uri = model_uri(reference, artifact)
    hint = ("pass models:/<name>@<alias>, runs:/<run_id>/model or a run ID, with MLFLOW_TRACKING_URI set to "
            "its store.")
    try:
        run_id = source_run(uri)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp))
            expected = mlflow.MlflowClient().get_run(run_id).data.tags.get(HASH_TAG) if run_id else None
            if expected and directory_sha256(local) != expected:
                raise BloodmlError(f"model '{reference}': its files differ from those recorded when it was trained "
                                   f"(SHA-256 mismatch); refusing to load them. Re-log or re-register the model.")
            if network:  # the torch module only: the graph is not loaded
                meta = mlflow.models.Model.load(str(local)).metadata or {}
                return rebuilt_network(reference, run_id, meta, Path(tmp)), meta
            # Exported on the CPU (PT2 weights cannot move between devices): load it there even where MLflow
            # would pick a GPU by default.
            model = mlflow.pyfunc.load_model(str(local), model_config={"device": "cpu"})
            meta = model.metadata.metadata or {}
    except (MlflowException, OSError) as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise BloodmlError(f"model '{reference}' could not be loaded ({first}); {hint}")
    return model, meta


def rebuilt_network(reference: str, run_id: str | None, meta: dict, tmp: Path) -> BloodCellClassifier:
    """The classifier as a torch module: its backbone rebuilt from the registry (no weights downloaded) and the
    weights its run logged beside the graph loaded into it (checked against the SHA-256 in the model's metadata;
    tensors only: nothing is unpickled)."""
    weights = meta.get("weights") or {}
    if not run_id or not weights.get("artifact") or "backbone" not in meta:
        raise BloodmlError(f"model '{reference}' has no weights beside its graph (it was logged before bloodml kept "
                           f"them); retrain it to use --adapt-bn.")
    state = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=weights["artifact"],
                                                     dst_path=str(tmp / "weights")))
    if file_sha256(state) != weights.get("sha256"):
        raise BloodmlError(f"model '{reference}': its weights differ from those recorded when it was trained "
                           f"(SHA-256 mismatch); refusing to load them. Re-log or re-register the model.")
    classes = list(meta["class_names"])
    features = meta.get("features", "final")  # models logged before features=stages pooled the final features
    backbone = create_backbone(meta["backbone"], pretrained=False, features=features)
    model = BloodCellClassifier(InputSpec.from_metadata(meta), backbone, head_for(backbone, len(classes)), classes,
                                tta=str(meta.get("tta", "false")).lower() == "true")
    model.load_state_dict(torch.load(state, map_location="cpu", weights_only=True))
    return model.eval()
