"""The served model: image files in, class names and probabilities out.

An MLflow pyfunc logged from code (loading it unpickles nothing) at ``runs:/<run_id>/image_model``, beside the
tensor-in PT2 ``model``. It holds that PT2 network and the segmenter when the input specification draws masks with
one; bloodml's image reading runs in the server, so serve it from bloodml's environment (`bloodml serve`, or
`mlflow models serve --env-manager local`). Its ``predict`` takes a table with
a column ``image`` (an image file's bytes; base64 text in JSON) and an optional ``mask``, and answers ``label``,
``confidence`` and ``p_<class>`` (:mod:`bloodml.serving.frames`). A bad request is an MLflow
INVALID_PARAMETER_VALUE error: HTTP 400 with the one-line reason, and the server goes on serving.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import PIL
import scipy
import tqdm
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from .. import __version__
from ..data.input_spec import InputSpec
from ..errors import BloodmlError
from ..evaluation.calls import CallRule
from ..segmentation.network import LoadedSegmenter
from ..serving.frames import CONFIDENCE, IMAGE, LABEL, MASK, classify_frame, probability_column
from .model import directory_sha256, network_requirements
from .registry import model_uri, run_logged_models, source_run

IMAGE_MODEL = "image_model"
IMAGE_HASH_TAG = "bloodml.image_model_sha256"
ENTRY = Path(__file__).with_name("image_model_entry.py")


class ImageModel(mlflow.pyfunc.PythonModel):
    """Loads the PT2 network (and segmenter) from the model's own artifacts; predicts on request tables."""

    def load_context(self, context):
        network = mlflow.pyfunc.load_model(context.artifacts["network"], model_config={"device": "cpu"})
        meta = network.metadata.metadata or {}
        self.network, self.classes, self.spec = network, list(meta["class_names"]), InputSpec.from_metadata(meta)
        self.rule = CallRule.of_model(meta)
        self.segmenter = None
        if "segmenter" in context.artifacts:
            drawn = mlflow.pyfunc.load_model(context.artifacts["segmenter"], model_config={"device": "cpu"})
            about = drawn.metadata.metadata or {}
            self.segmenter = LoadedSegmenter(drawn.predict, about.get("image_size", 128), self.spec.segmenter,
                                             about.get("regions", []), [])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        try:
            return classify_frame(model_input, self.network.predict, self.classes, self.spec, self.segmenter,
                                  rule=self.rule)
        except BloodmlError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None


def request_signature(classes: list[str]) -> ModelSignature:
    """Image (and optional mask) file bytes in; the label, its confidence and each class's probability out."""
    inputs = Schema([ColSpec("binary", IMAGE), ColSpec("binary", MASK, required=False)])
    outputs = Schema([ColSpec("string", LABEL), ColSpec("double", CONFIDENCE)]
                     + [ColSpec("double", probability_column(name)) for name in classes])
    return ModelSignature(inputs=inputs, outputs=outputs)


def requirements() -> list[str]:
    """The network's packages, those bloodml's image reading needs, and bloodml itself (its reading code runs in
    the server: `mlflow models serve --env-manager local` from bloodml's environment)."""
    return network_requirements() + [f"pandas=={pd.__version__}", f"pillow=={PIL.__version__}",
                                     f"scipy=={scipy.__version__}", f"tqdm=={tqdm.__version__}",
                                     f"bloodml=={__version__}"]


def log_image_model(network_uri: str, classes: list[str], spec: InputSpec, example_image: bytes,
                    example_mask: bytes | None = None) -> str:
    """Log the image-in model of a run whose tensor-in network is at ``network_uri``. Returns its URI."""
    artifacts = {"network": network_uri}
    if spec.segmented and spec.segmenter:
        artifacts["segmenter"] = spec.segmenter
    example = pd.DataFrame({IMAGE: [example_image], **({MASK: [example_mask]} if example_mask is not None else {})})
    with tempfile.TemporaryDirectory() as tmp:
        info = mlflow.pyfunc.log_model(
            name=IMAGE_MODEL, python_model=str(ENTRY), artifacts=artifacts,
            signature=request_signature(classes), input_example=example, pip_requirements=requirements(),
            metadata={"class_names": list(classes), "input_spec": spec.to_dict(),
                      "input": "a table: image (file bytes; base64 text in JSON), optional mask (same)",
                      "output": "label, confidence and p_<class> for every class"})
        local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(Path(tmp) / "check"))
        mlflow.set_tag(IMAGE_HASH_TAG, directory_sha256(Path(local)))
    return info.model_uri


def image_model_uri(reference: str) -> str:
    """``runs:/<run_id>/image_model`` of the run behind any model reference (a registry alias, a run ID, the run's
    tensor-in model); one line when that run logged none (models trained before bloodml served images)."""
    uri = model_uri(reference)
    try:
        run_id = source_run(uri)
        if run_id is None:
            raise BloodmlError(f"model '{reference}': not a run's model; pass models:/<name>@<alias>, "
                               f"models:/<name>/<version>, runs:/<run_id>/model or a run ID.")
        logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
        logged |= {m.name for m in run_logged_models(run_id)}
    except MlflowException as exc:
        raise BloodmlError(f"model '{reference}' not found ({str(exc).splitlines()[0][:160]}); check the name, "
                           f"alias or run ID and MLFLOW_TRACKING_URI.")
    if IMAGE_MODEL not in logged:
        raise BloodmlError(f"run {run_id} has no {IMAGE_MODEL} (trained before bloodml served image files); "
                           f"retrain it, or send tensors to its runs:/{run_id}/model.")
    return f"runs:/{run_id}/{IMAGE_MODEL}"
