"""`bloodml serve`: `mlflow models serve` on a run's image-in model, with a request a person can paste."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..runtime import say
from ..tracking.image_model import image_model_uri
from ..tracking.store import configure_tracking

REQUEST = """printf '{"dataframe_split": {"columns": ["image"], "data": [["%s"]]}}' "$(base64 < cell.bmp | tr -d '\\n')" > request.json"""


def curl_example(host: str, port: int) -> list[str]:
    """Two shell lines: write a request for ``cell.bmp``, and post it."""
    address = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return [REQUEST, f"curl -X POST -H 'Content-Type: application/json' --data @request.json "
                     f"http://{address}:{port}/invocations"]


def serve_command(uri: str, host: str, port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", host,
            "-p", str(port), "-w", str(workers)]


def serve_image_model(reference: str, host: str, port: int, workers: int = 1) -> None:
    """Resolve the model, print what is served and how to call it, then become the MLflow server."""
    configure_tracking()
    uri = image_model_uri(reference)
    command = serve_command(uri, host, port, workers)
    say(f"serving {uri}: POST image files (base64) to http://{host}:{port}/invocations; try:")
    for line in curl_example(host, port):
        say(f"  {line}")
    say(f"running: mlflow models serve -m {uri} --env-manager local -h {host} -p {port} -w {workers}")
    sys.stdout.flush()
    # MLflow starts `uvicorn` by name: find it beside this Python even when its environment is not activated.
    environment = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    os.execve(command[0], command, environment)  # Ctrl-C stops the server itself, not a wrapper around it
