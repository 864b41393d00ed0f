"""Issue 17: public datasets fetched from a pinned source, every file checked, cached; a bare clone's demo."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from bloodml.data.fetch import CATALOG, WBC_COMMIT, VERIFIED
from clihelp import run_cli
from conftest import REPO, WBC, needs_wbc


def github_like_zip(path: Path, corrupt: str = "") -> Path:
    """A zip laid out like GitHub's archive of zxaoyou/segmentation_WBC at the pinned commit, from the real files."""
    top = f"segmentation_WBC-{WBC_COMMIT}"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(WBC.iterdir()):
            if file.suffix in (".bmp", ".png"):
                data = file.read_bytes()
                if file.name == corrupt:
                    data = data[:-1] + bytes([data[-1] ^ 0xFF])
                archive.writestr(f"{top}/Dataset 1/{file.name}", data)
        archive.write(WBC / "Class Labels of Dataset 1.csv", f"{top}/Class Labels of Dataset 1.csv")
        archive.write(WBC / "LICENSE-GPL-3.0.txt", f"{top}/LICENSE")
        archive.writestr(f"{top}/README.rst", "not kept")
    return path


@pytest.fixture
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served."""
    served = tmp_path / "served"
    served.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@needs_wbc
def test_fetch_from_a_local_server_checks_every_file_and_keeps_nothing_of_a_bad_archive(local_server, tmp_path,
                                                                                        capsys, monkeypatch):
    served, base = local_server
    cache = tmp_path / "cache"
    monkeypatch.setenv("BLOODML_CACHE", str(cache))
    github_like_zip(served / "bad.zip", corrupt="123.png")
    code, out, err = run_cli(capsys, "data", "fetch", "wbc-zheng2018", "--url", f"{base}/bad.zip")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "Dataset 1/123.png differs from its pinned SHA-256" in err and "nothing was kept" in err
    assert not (cache / "data" / "wbc-zheng2018").exists() and list((cache / "data").iterdir()) == []
    (served / "truncated.zip").write_bytes((served / "bad.zip").read_bytes()[:5000])
    code, out, err = run_cli(capsys, "data", "fetch", "wbc-zheng2018", "--url", f"{base}/truncated.zip")
    assert code == 2 and "not a valid zip" in err and list((cache / "data").iterdir()) == []

    github_like_zip(served / "good.zip")
    code, out, err = run_cli(capsys, "data", "fetch", "wbc-zheng2018", "--url", f"{base}/good.zip")
    assert code == 0, err
    fetched = cache / "data" / "wbc-zheng2018"
    assert out.strip().splitlines()[-1] == str(fetched) and (fetched / VERIFIED).is_file()
    assert "downloading" in out and "602 files checked" in out and "%|" not in out + err
    for file in WBC.iterdir():  # the same layout and bytes as the development copy
        assert (fetched / file.name).read_bytes() == file.read_bytes(), file.name
    assert not (fetched / "README.rst").exists() and not (fetched / "Dataset 1").exists()
    code, out, err = run_cli(capsys, "data", "fetch", "wbc-zheng2018", "--url", f"{base}/missing.zip")
    assert code == 0 and "already here, checked" in out  # a complete copy is not fetched again

    mine = tmp_path / "mine" / "wbc-zheng2018"  # a user's own folder of that name is never touched
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my work")
    code, out, err = run_cli(capsys, "data", "fetch", "wbc-zheng2018", "--to", tmp_path / "mine", "--url",
                             f"{base}/good.zip")
    assert code == 2 and "already exists and is not a checked copy" in err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    code, out, err = run_cli(capsys, "data", "fetch", "all-idb2")
    assert code == 2 and "given by their authors on request" in err


@needs_wbc
def test_a_bare_clone_without_data_or_network_says_what_to_download(tmp_path):
    """No ../shared beside it, nothing cached, no network: the demo ends with one line saying what to download and
    where to put it, exit code non-zero, no traceback; with the dataset in the cache, the name finds it."""
    bare = tmp_path / "bare" / "bloodml-clone"
    shutil.copytree(REPO / "bloodml", bare / "bloodml", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(bare), "BLOODML_CACHE": str(tmp_path / "cache"), "CI": "true",
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": ""}
    done = subprocess.run([sys.executable, "-m", "bloodml.demo", "--epochs", "1"], cwd=bare, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr + done.stdout
    [line] = done.stderr.strip().splitlines()
    assert f"could not download {CATALOG['wbc-zheng2018'].url}" in line and "--archive" in line

    archive = github_like_zip(tmp_path / "by-hand.zip")
    fetched = subprocess.run([sys.executable, "-m", "bloodml.cli", "data", "fetch", "wbc-zheng2018", "--archive",
                              str(archive)], cwd=bare, env=env, capture_output=True, text=True, timeout=300)
    assert fetched.returncode == 0, fetched.stderr
    found = subprocess.run([sys.executable, "-m", "bloodml.cli", "data", "inspect", "--data", "wbc-zheng2018"],
                           cwd=bare, env=env, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr
    assert str(tmp_path / "cache" / "data" / "wbc-zheng2018") in found.stdout and "297 images" in found.stdout
