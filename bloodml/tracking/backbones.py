"""Pretrained backbones in MLflow: log a backbone folder into a run (artifact ``backbone/``), register it as a
version of a registered model with an alias, and bring a ``models:/``/``runs:/`` backbone URI back as a local
folder that ``models.registry.create_backbone`` builds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from ..runtime import cache_root
from ..errors import BloodmlError
from ..models.backbone_card import CARD, read_card
from ..models.registry import Backbone, create_backbone
from .registry import _permitted, set_alias
from .store import configure_tracking

ARTIFACT = "backbone"


def is_backbone_uri(reference: str) -> bool:
    return str(reference).startswith(("models:/", "runs:/"))


def local_backbone(reference: str) -> str:
    """``reference`` as create_backbone takes it: a backbone URI downloaded (once per model version or run) to a
    local folder; anything else unchanged. One line when the URI is not found or names something that is not a
    backbone."""
    if not is_backbone_uri(reference):
        return reference
    configure_tracking()
    uri = reference
    if uri.startswith("runs:/") and uri.rstrip("/").count("/") == 1:  # runs:/<id>: its backbone
        uri = f"{uri.rstrip('/')}/{ARTIFACT}"
    try:
        pinned = _pinned(uri)
        folder = cache_root() / "backbones" / hashlib.sha256(pinned.encode()).hexdigest()[:20]
        if not (folder / CARD).is_file():
            mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(folder))
    except (MlflowException, OSError) as exc:
        raise BloodmlError(f"backbone='{reference}' not found ({str(exc).splitlines()[0][:160]}); check the name, "
                           f"alias or run ID and MLFLOW_TRACKING_URI (bloodml pretrain registers one).")
    read_card(folder, reference)  # not a backbone: one line naming the URI
    return str(folder)


def backbone_from(reference: str, pretrained: bool = True, weights: str = "", features: str = "final") -> Backbone:
    """The backbone ``reference`` names (a name, a folder, or a logged backbone's URI), built: the one place the
    commands turn ``backbone=`` into a network."""
    return create_backbone(local_backbone(reference), pretrained, weights, features, reference=reference)


def _pinned(uri: str) -> str:
    """A models:/ URI with its alias resolved to the version it points at now (a moved alias downloads anew)."""
    if uri.startswith("models:/") and "@" in uri:
        name, alias = uri[len("models:/"):].split("@", 1)
        version = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
        return f"models:/{name}/{version.version}"
    return uri


def log_backbone(folder: Path, run_id: str) -> str:
    """The backbone folder as the run's ``backbone/`` artifact. Returns its runs:/ URI."""
    mlflow.MlflowClient().log_artifacts(run_id, str(folder), ARTIFACT)
    return f"runs:/{run_id}/{ARTIFACT}"


def register_backbone(run_id: str, name: str, alias: str, tags: dict | None = None) -> str:
    """The run's backbone as a new version of registered model ``name`` (created if need be), ``alias`` moved to
    it. Returns the version."""
    client = mlflow.MlflowClient()
    with _permitted(name, "register a version"):
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="Backbones fine-tuned by `bloodml pretrain`: use one "
                                                              "as backbone=models:/<name>@<alias>.")
        source = client.get_run(run_id).info.artifact_uri.rstrip("/") + f"/{ARTIFACT}"
        version = client.create_model_version(name, source, run_id=run_id, tags={k: str(v) for k, v in
                                                                                 (tags or {}).items()}).version
    if alias:
        set_alias(name, alias, str(version))
    return str(version)
