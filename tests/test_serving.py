"""Serving to a real client: `bloodml serve` (mlflow models serve --env-manager local) on a model trained here,
real HTTP requests carrying image files, the same answers as `bloodml predict`, a bad image refused with HTTP 400
while the server goes on, and the serving guide's curl example run as written."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bloodml.config import build_config
from bloodml.inputs.dataset import decode_sample, load_sample
from bloodml.inputs.input_spec import InputSpec
from bloodml.errors import BloodmlError
from bloodml.predict import predict_images
from bloodml.serving.frames import classify_frame, file_bytes, probability_table
from bloodml.train import run_training
from conftest import REPO, WBC, cell_image, needs_wbc, tiny_overrides


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def request_of(*files: bytes) -> dict:
    return {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(f).decode()] for f in files]}}


class Server:
    """`bloodml serve` in its own process group, stopped (with whatever it started) on exit."""

    def __init__(self, reference: str, port: int, log: Path):
        self.url, self.log = f"http://127.0.0.1:{port}", log
        with open(log, "w") as output:
            self.process = subprocess.Popen([sys.executable, "-m", "bloodml.cli", "serve", "-m", reference, "-p",
                                             str(port)], stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True, env={**os.environ, "CI": "true"})

    @property
    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def wait_ready(self, seconds: float = 90) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("server exited:\n" + "\n".join(self.lines))
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("server not ready in time:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        assert self.process.poll() is not None


def guide_request_block() -> str:
    text = (REPO / "docs" / "guides" / "serving.md").read_text()
    block = re.search(r"<!-- serve-request -->\s*```bash[^\n]*\n(.*?)```", text, re.S)
    assert block, "the serving guide has no serve-request example"
    return block.group(1)


@needs_wbc
def test_served_model_answers_image_files_like_predict(tmp_path):
    started = time.perf_counter()
    config = build_config(REPO / "experiments/wbc.yaml", tiny_overrides(WBC, epochs=2, gradcam_samples=0,
                                                                        bootstrap=100, aug_views=1))
    run_id = run_training(config).run_id
    bmp = WBC / "001.bmp"
    png = tmp_path / "002.png"
    Image.open(WBC / "002.bmp").save(png)
    expected, _ = predict_images(run_id, [bmp, png])
    port = free_port()
    server = Server(run_id, port, tmp_path / "server.log")
    try:
        server.wait_ready()
        assert any("mlflow models serve -m runs:/" in line and "--env-manager local" in line for line in server.lines)
        status, answer = post(f"{server.url}/invocations", request_of(bmp.read_bytes(), png.read_bytes()))
        assert status == 200, answer
        served = pd.DataFrame(answer["predictions"])
        assert list(served["label"]) == list(expected["predicted_label"])
        probability_columns = [c for c in expected.columns if c.startswith("p_")]
        assert probability_columns and list(served.columns) == ["label", "confidence", *probability_columns]
        assert np.allclose(served[probability_columns], expected[probability_columns], atol=1e-5)
        assert np.allclose(served["confidence"], expected["confidence"], atol=1e-5)

        status, answer = post(f"{server.url}/invocations", request_of(png.read_bytes(), b"not an image at all"))
        assert status == 400
        assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "row 1: not a readable image" in answer["message"].splitlines()[-1]
        status, answer = post(f"{server.url}/invocations", request_of(bmp.read_bytes()))
        assert status == 200 and answer["predictions"][0]["label"] == expected["predicted_label"][0]

        script = guide_request_block().replace(":5000", f":{port}")
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])  # `bloodml` of this install
        shown = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                               env={**os.environ, "PATH": path})
        assert shown.returncode == 0, shown.stderr
        pasted = json.loads(shown.stdout)["predictions"][0]
        assert pasted["label"] == expected["predicted_label"][0]
        assert np.isclose(pasted[probability_columns[0]], expected[probability_columns[0]][0], atol=1e-5)
    finally:
        server.stop()
    assert time.perf_counter() - started < 120


def test_request_cells_take_bytes_or_base64_text_and_bad_ones_get_one_line(tmp_path):
    data = b"\x89PNG payload"
    assert file_bytes(data, "row 0 image") == data
    assert file_bytes(base64.b64encode(data).decode(), "row 0 image") == data
    assert file_bytes("data:image/png;base64," + base64.b64encode(data).decode(), "row 0 image") == data
    assert file_bytes(None, "row 0 mask") is None and file_bytes(float("nan"), "row 0 mask") is None
    with pytest.raises(BloodmlError, match=r"^row 2 image: text that is not base64"):
        file_bytes("not base64 !", "row 2 image")
    with pytest.raises(BloodmlError, match=r"needs a column 'image'.*got picture"):
        classify_frame(pd.DataFrame({"picture": [data]}), None, ["a", "b"], InputSpec())
    with pytest.raises(BloodmlError, match=r"^row 0: empty \(0 bytes\)"):
        classify_frame(pd.DataFrame({"image": [b""]}), None, ["a", "b"], InputSpec())


def test_decoded_requests_match_the_files_read_for_training(tmp_path):
    """The bytes path (serving) and the file path (training, predict) give the same pixels and region maps."""
    image, mask = cell_image("alpha", 3, size=40)
    Image.fromarray(image).save(tmp_path / "cell.bmp")
    Image.fromarray(mask).save(tmp_path / "cell.png")
    for mode in ("none", "cell", "crop_cell"):
        spec = InputSpec(image_size=24, mask_mode=mode)
        from_disk = load_sample(str(tmp_path / "cell.bmp"), str(tmp_path / "cell.png"), spec)
        from_bytes = decode_sample((tmp_path / "cell.bmp").read_bytes(), (tmp_path / "cell.png").read_bytes(), spec)
        assert torch.equal(from_disk[0], from_bytes[0])
        if mode != "none":
            assert torch.equal(from_disk[1], from_bytes[1])
    with pytest.raises(BloodmlError, match=r"^row 4: the model was trained with masks=cell and needs this image's "
                                           r"mask; send it in the 'mask' column"):
        decode_sample((tmp_path / "cell.bmp").read_bytes(), None, InputSpec(mask_mode="cell"), name="row 4")


def test_probability_table_names_every_class():
    table = probability_table(np.array([[0.2, 0.8], [0.6, 0.4]]), ["normal", "blast"])
    assert list(table.columns) == ["label", "confidence", "p_normal", "p_blast"]
    assert list(table["label"]) == ["blast", "normal"] and list(table["confidence"]) == [0.8, 0.6]
