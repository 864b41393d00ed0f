"""Public datasets bloodml can fetch: pinned sources, every file checked against its pinned SHA-256, cached.

``bloodml data fetch NAME`` downloads a dataset's archive (a pinned commit, so the content cannot drift), extracts
it with the zip-slip checks of :func:`bloodml.data.archives.extract_zip`, checks every file it keeps against the
SHA-256 list shipped in ``data/catalog/NAME.sha256`` and only then moves the folder into place
(``$BLOODML_CACHE/data/NAME``): a failed or corrupted download leaves nothing behind. Hashes are of the files, not
of the archive, because GitHub builds its archives on request and does not promise their bytes.

:func:`locate` lets ``data=wbc-zheng2018`` name a dataset: the development copy in ``../shared/data`` when present,
else the cache, else a fetch.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import BloodmlError
from ..runtime import cache_root, say, show_progress
from .checksums import file_sha256
from .archives import extract_zip

CATALOG_FILES = Path(__file__).with_name("catalog")
VERIFIED = ".bloodml-verified"  # written last into a complete, checked dataset folder


@dataclass(frozen=True)
class PublicDataset:
    name: str
    url: str  # a pinned archive
    prefix: str  # where the kept files sit inside the archive's single top folder
    renames: tuple[tuple[str, str], ...]  # archive path -> path in the dataset folder (others keep their name)
    about: str  # source, licence, citation: printed when fetched

    def checksums(self) -> dict[str, str]:
        """Archive path -> SHA-256, for every file kept."""
        lines = (CATALOG_FILES / f"{self.name}.sha256").read_text().splitlines()
        return {line[66:]: line[:64] for line in lines if line.strip()}

    def target_name(self, path: str) -> str:
        renamed = dict(self.renames)
        if path in renamed:
            return renamed[path]
        return path[len(self.prefix):] if path.startswith(self.prefix) else path


WBC_COMMIT = "fa9c01622f52bccb9aeb8a6f2628f564e377767d"  # zxaoyou/segmentation_WBC, 2019-03-27
CATALOG = {
    "wbc-zheng2018": PublicDataset(
        name="wbc-zheng2018",
        url=f"https://github.com/zxaoyou/segmentation_WBC/archive/{WBC_COMMIT}.zip",
        prefix="Dataset 1/", renames=(("LICENSE", "LICENSE-GPL-3.0.txt"),),
        about="Zheng et al., Micron 107:55-71, 2018 (Dataset 1: 300 white cells with expert masks; images from "
              "Jiangxi Tecom Science Corporation); GitHub zxaoyou/segmentation_WBC, GPL-3.0"),
}
# Datasets the docs name that bloodml cannot fetch, and how to get them.
ELSEWHERE = {
    "all-idb2": "ALL-IDB2 images are given by their authors on request (https://scotti.di.unimi.it/all/); its masks "
                "are on GitHub (Loddo & Putzu, MIT). Put the folder anywhere and pass data=<folder>.",
    "bccd": "the bccd crops are made from two repositories (Shenggan/BCCD_Dataset boxes and ParthaPratimBanik's "
            "masks and labels, both MIT) as ../shared/data/README.md describes; bloodml does not build them yet.",
    "pbc": "PBC (Acevedo et al., Data in Brief 30:105474, 2020; CC BY 4.0) is on Mendeley Data "
           "(doi:10.17632/snkd93bnjr.1): unpack it and pass data=<folder> (one sub-folder per class).",
    "lymphocytosis-dev": "a development subset of the lymphocytosis set of Sahasrabudhe et al. (IEEE JBHI 2021); no "
                         "licence was found with its source, so bloodml does not redistribute or fetch it.",
}


def data_home() -> Path:
    return cache_root() / "data"


def known(name: str) -> PublicDataset:
    if name in CATALOG:
        return CATALOG[name]
    if name in ELSEWHERE:
        raise BloodmlError(f"{name}: bloodml cannot fetch it: {ELSEWHERE[name]}")
    raise BloodmlError(f"{name}: not a dataset bloodml knows; fetchable: {', '.join(CATALOG)}.")


def is_complete(folder: Path) -> bool:
    return (folder / VERIFIED).is_file()


def fetch(name: str, to: str | Path | None = None, url: str = "", archive: str | Path | None = None) -> Path:
    """The dataset's folder (``to``/NAME, default the cache's), fetched (or taken from ``archive``, a zip downloaded
    by hand) and checked if it is not there yet; a folder of that name that is not a checked copy is never touched.
    ``url`` overrides the pinned source (mirrors, tests); the checksums stay pinned."""
    dataset = known(name)
    target = (Path(to).expanduser() if to else data_home()) / name
    if is_complete(target):
        say(f"{name}: already here, checked: {target}")
        return target
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BloodmlError(f"{target}: already exists and is not a checked copy of {name}; move it away or pass "
                           f"another --to (nothing was changed).")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as work:
        work = Path(work)
        source = Path(archive).expanduser() if archive else download(url or dataset.url, work / "archive.zip", name)
        if not source.is_file():
            raise BloodmlError(f"{source}: no such archive; download {dataset.url} and pass it with --archive.")
        say(f"{name}: extracting and checking {source.name}")
        top = extract_zip(source, work)
        staged = work / "dataset"
        checked = stage_checked(dataset, top, staged, url or str(source))
        (staged / VERIFIED).write_text(f"{dataset.url}\n{checked} files checked against bloodml's pinned SHA-256\n")
        if target.exists():  # an empty folder (checked above): the checked copy takes its place
            target.rmdir()
        staged.rename(target)  # the folder appears whole, checked, or not at all
    say(f"{name}: {checked} files checked, ready at {target} ({dataset.about})")
    return target


def stage_checked(dataset: PublicDataset, top: Path, staged: Path, origin: str) -> int:
    """Copy every pinned file from the extracted archive into ``staged``, each checked against its SHA-256."""
    staged.mkdir()
    expected = dataset.checksums()
    for path, digest in expected.items():
        found = top / path
        if not found.is_file():
            raise BloodmlError(f"{origin}: {path} is missing from the archive (not the pinned {dataset.name} "
                               f"archive?); nothing was kept.")
        if file_sha256(found) != digest:
            raise BloodmlError(f"{origin}: {path} differs from its pinned SHA-256 (a corrupted or changed download); "
                               f"nothing was kept. Fetch it again.")
        destination = staged / dataset.target_name(path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(found), destination)
    return len(expected)


def download(url: str, destination: Path, name: str, timeout: float = 60) -> Path:
    """``url`` to ``destination`` (a progress bar on a terminal, one line in logs); one line on failure."""
    say(f"{name}: downloading {url}")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer, open(destination, "wb") as out:
            size = int(answer.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=name, disable=not show_progress(),
                      leave=False) as bar:
                for block in iter(lambda: answer.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise BloodmlError(f"{name}: could not download {url} ({str(reason).splitlines()[0][:120]}); on a machine "
                           f"without internet, download it elsewhere and run 'bloodml data fetch {name} --archive "
                           f"<the zip>', or point data= at a copy of the dataset.")
    megabytes = destination.stat().st_size / 1e6
    say(f"{name}: downloaded {megabytes:.1f} MB in {time.perf_counter() - started:.1f}s")
    return destination


def development_copies() -> list[Path]:
    """Where a development checkout keeps the datasets: ../shared/data beside the working folder or the project."""
    project = Path(__file__).resolve().parents[2]
    return [Path.cwd().parent / "shared" / "data", project.parent / "shared" / "data"]


def locate(data: str) -> Path | None:
    """A dataset named by its catalog name (``data=wbc-zheng2018``): the development copy when there is one, else
    the cache, else fetched. None when ``data`` is not such a name (a path: the readers take it as it is)."""
    if not data or data not in {**CATALOG, **ELSEWHERE} or Path(data).exists():
        return None
    for folder in development_copies():
        if (folder / data).is_dir():
            return folder / data
    if data in ELSEWHERE:
        known(data)  # how to get it, in one line
    cached = data_home() / data
    if is_complete(cached):
        return cached
    return fetch(data)
