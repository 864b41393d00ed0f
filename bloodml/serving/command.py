"""`bloodml serve`: `mlflow models serve` on a run's image-in model, with a request a person can paste."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..runtime import say
from ..inputs.input_spec import InputSpec
from ..tracking.pyfunc import logged_metadata
from ..tracking.store import configure_tracking
from .image_model import image_model_uri


def request_line(mask: bool) -> str:
    """A shell line that writes a request for ``cell.bmp`` (and, for a model that needs its mask, ``cell_mask.png``)
    into request.json."""
    if not mask:
        return ("""printf '{"dataframe_split": {"columns": ["image"], "data": [["%s"]]}}' """
                """"$(base64 < cell.bmp | tr -d '\\n')" > request.json""")
    return ("""printf '{"dataframe_split": {"columns": ["image", "mask"], "data": [["%s", "%s"]]}}' """
            """"$(base64 < cell.bmp | tr -d '\\n')" "$(base64 < cell_mask.png | tr -d '\\n')" > request.json""")


def needs_mask(spec: InputSpec) -> bool:
    """A masked model without a segmenter to draw missing masks needs each image's mask in the request."""
    return spec.masked and not spec.segmented


def curl_example(host: str, port: int, mask: bool = False) -> list[str]:
    """Two shell lines: write a request for ``cell.bmp`` (with its mask when the model needs one), and post it."""
    address = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return [request_line(mask), f"curl -X POST -H 'Content-Type: application/json' --data @request.json "
                                f"http://{address}:{port}/invocations"]


def serve_command(uri: str, host: str, port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", host,
            "-p", str(port), "-w", str(workers)]


def serve_image_model(reference: str, host: str, port: int, workers: int = 1) -> None:
    """Resolve the model, print what is served and how to call it, then become the MLflow server."""
    configure_tracking()
    uri = image_model_uri(reference)
    command = serve_command(uri, host, port, workers)
    mask = needs_mask(InputSpec.from_metadata(logged_metadata(uri)))
    files = "cell.bmp and its mask cell_mask.png (the model was trained with masks)" if mask else "cell.bmp"
    say(f"serving {uri}: POST image files (base64) to http://{host}:{port}/invocations; try, in a folder "
        f"holding {files}:")
    for line in curl_example(host, port, mask):
        say(f"  {line}")
    say(f"running: mlflow models serve -m {uri} --env-manager local -h {host} -p {port} -w {workers}")
    sys.stdout.flush()
    # MLflow starts `uvicorn` by name: find it beside this Python even when its environment is not activated.
    environment = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    os.execve(command[0], command, environment)  # Ctrl-C stops the server itself, not a wrapper around it
