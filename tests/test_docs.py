"""The README and the guides stay true: every `bash` block runs as printed, in order, in a copy of the project
(the real data beside it, a fresh MLflow store, after a short demo that registers models:/bloodml-demo@champion as
`make demo` does). A block it does not run carries its reason in its fence (gpu, server, manual, setup: docs/README.md). The
parameter reference is the one the code generates."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA, needs_wbc

sys.path.insert(0, str(REPO / "tools"))
from params_table import page  # noqa: E402

MARKERS = {"gpu", "server", "manual", "setup"}
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```bash([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks(path: Path) -> list[tuple[str, str]]:
    """(marker, text) of every bash block of a document, in order; marker '' for blocks that run."""
    return [(info.strip(), text) for info, text in BLOCK.findall(path.read_text())]


def test_every_block_runs_or_says_why_not():
    for path in DOCUMENTS:
        for marker, _ in blocks(path):
            assert marker in MARKERS | {""}, f"{path.relative_to(REPO)}: a block marked '{marker}'; use one of {MARKERS}"
    assert sum(1 for path in DOCUMENTS for marker, _ in blocks(path) if not marker) >= 1


def test_the_parameter_reference_is_generated_from_the_code():
    assert (REPO / "docs" / "reference" / "parameters.md").read_text() == page(), \
        "run: python tools/params_table.py > docs/reference/parameters.md"


def test_readme_fits_on_a_few_screens_and_shows_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make demo" in readme and "make test" in readme and "make test" in (REPO / ".ci" / "run").read_text()
    for link in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)", readme):
        assert (REPO / link).is_file(), f"README links to a missing {link}"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project's tracked files beside the real data, the virtual environment's programs first on
    PATH, one store and feature cache for the module; the demo run first (2 epochs), as `make demo` leaves it."""
    root = tmp_path_factory.mktemp("docs")
    work = root / "main"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    for name in listed:
        if (REPO / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
    (root / "shared").symlink_to(SHARED_DATA.parent)
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "BLOODML_CACHE": str(root / "cache"),
           "CI": "true"}
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    demo = subprocess.run([sys.executable, "-m", "bloodml.demo", "--epochs", "2"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "as models:/bloodml-demo@champion" in demo.stdout
    return work, env


KEPT_OUT = {".venv", "out", "mlruns", "__pycache__"}  # the outputs' folder, MLflow's artefacts, caches
STORES = {"mlflow.db", "mlflow.db.lock", "optuna.db"}  # the default MLflow and Optuna stores (git-ignored)


def loose_files(work: Path) -> set[str]:
    """Files in the project copy outside the folders recipes may write into."""
    found = set()
    for folder, subfolders, files in os.walk(work):
        subfolders[:] = [name for name in subfolders if name not in KEPT_OUT and not name.endswith(".egg-info")]
        found |= {str(Path(folder, name).relative_to(work)) for name in files if name not in STORES}
    return found


def run_blocks(document: Path, project, chosen: set[str]) -> None:
    """Run the blocks of ``document`` whose marker is in ``chosen``, in order; none may fail or leave a file in the
    project folder but under out/ (and MLflow's mlruns/ and the default stores)."""
    work, env = project
    before = loose_files(work)
    for marker, text in blocks(document):
        if marker not in chosen:
            continue
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", text], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, (f"{document.relative_to(REPO)}:\n{text}\n---\n{done.stdout[-3000:]}\n"
                                      f"{done.stderr[-3000:]}")
    assert loose_files(work) == before, f"left in the project folder: {sorted(loose_files(work) - before)}"


@needs_wbc
@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(p.relative_to(REPO)) for p in DOCUMENTS])
def test_the_documents_blocks_run_as_printed(document, project):
    run_blocks(document, project, {""})


MANUAL = [p for p in DOCUMENTS if any(marker == "manual" for marker, _ in blocks(p))]


@needs_wbc
@pytest.mark.skipif(not os.environ.get("BLOODML_DOCS_MANUAL"), reason="the guides' manual blocks run when "
                    "BLOODML_DOCS_MANUAL=1, by hand before a release; CI's 25 minutes cannot hold them")
@pytest.mark.parametrize("document", MANUAL, ids=[str(p.relative_to(REPO)) for p in MANUAL])
def test_the_documents_manual_blocks_run_as_printed(document, project):
    """The blocks fenced `manual`, after the document's own: `BLOODML_DOCS_MANUAL=1 pytest tests/test_docs.py`."""
    run_blocks(document, project, {"", "manual"})
