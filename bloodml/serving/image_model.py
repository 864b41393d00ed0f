"""The served model: image files in, class names and probabilities out.

An MLflow pyfunc logged from code (loading it unpickles nothing) at ``runs:/<run_id>/image_model``, beside the
tensor-in PT2 ``model``. It holds that PT2 network and the segmenter when the input specification draws masks with
one; bloodml's image reading runs in the server, so serve it from bloodml's environment (`bloodml serve`, or
`mlflow models serve --env-manager local`). Its ``predict`` takes a table with a column ``image`` (an image file's
bytes; base64 text in JSON) and an optional ``mask``, and answers ``label`` (called by the model's own rule),
``confidence`` and ``p_<class>`` (:mod:`bloodml.serving.frames`). A bad request is an MLflow
INVALID_PARAMETER_VALUE error: HTTP 400 with the one-line reason, and the server goes on serving. Its MLflow calls
live in :mod:`bloodml.tracking.pyfunc`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import PIL
import scipy
import tqdm

from .. import __version__
from ..errors import BloodmlError
from ..evaluation.calls import CallRule
from ..inputs.input_spec import InputSpec
from ..segmentation.network import LoadedSegmenter
from ..tracking.model import network_requirements
from ..tracking.pyfunc import PythonModel, bad_request, load_pyfunc, log_code_model, logged_model_run, \
    pyfunc_metadata, table_signature
from .frames import CONFIDENCE, IMAGE, LABEL, MASK, classify_frame, probability_column

IMAGE_MODEL = "image_model"
IMAGE_HASH_TAG = "bloodml.image_model_sha256"
ENTRY = Path(__file__).with_name("image_model_entry.py")


class ImageModel(PythonModel):
    """Loads the PT2 network (and segmenter) from the model's own artifacts; predicts on request tables."""

    def load_context(self, context):
        network = load_pyfunc(context.artifacts["network"])
        meta = pyfunc_metadata(network)
        self.network, self.classes, self.spec = network, list(meta["class_names"]), InputSpec.from_metadata(meta)
        self.rule = CallRule.of_model(meta)
        self.segmenter = None
        if "segmenter" in context.artifacts:
            drawn = load_pyfunc(context.artifacts["segmenter"])
            about = pyfunc_metadata(drawn)
            self.segmenter = LoadedSegmenter(drawn.predict, about.get("image_size", 128), self.spec.segmenter,
                                             about.get("regions", []), [])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        try:
            return classify_frame(model_input, self.network.predict, self.classes, self.spec, self.segmenter,
                                  rule=self.rule)
        except BloodmlError as exc:
            raise bad_request(str(exc)) from None


def request_signature(classes: list[str]):
    """Image (and optional mask) file bytes in; the label, its confidence and each class's probability out."""
    return table_signature([("binary", IMAGE, True), ("binary", MASK, False)],
                           [("string", LABEL), ("double", CONFIDENCE)]
                           + [("double", probability_column(name)) for name in classes])


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
    return log_code_model(IMAGE_MODEL, ENTRY, artifacts, request_signature(classes), example, requirements(),
                          {"class_names": list(classes), "input_spec": spec.to_dict(),
                           "input": "a table: image (file bytes; base64 text in JSON), optional mask (same)",
                           "output": "label, confidence and p_<class> for every class"}, IMAGE_HASH_TAG)


def image_model_uri(reference: str) -> str:
    """``runs:/<run_id>/image_model`` of the run behind any model reference (a registry alias, a run ID, the run's
    tensor-in model); one line when that run logged none (models trained before bloodml served images)."""
    run_id, logged = logged_model_run(reference)
    if IMAGE_MODEL not in logged:
        raise BloodmlError(f"run {run_id} has no {IMAGE_MODEL} (trained before bloodml served image files); "
                           f"retrain it, or send tensors to its runs:/{run_id}/model.")
    return f"runs:/{run_id}/{IMAGE_MODEL}"
