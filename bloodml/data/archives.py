"""A dataset handed over as a zip: checked before anything is written, unpacked whole or not at all.

Without a working folder (``data=cells.zip``) the archive is unpacked once into bloodml's cache under its SHA-256
and reused: a second run, a tuning study or ``predict`` on the same zip unpacks nothing and reads the same paths,
so every run's split manifest names the same files. Nothing is left behind in the system's temporary folder.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

from ..errors import BloodmlError
from ..runtime import cache_root
from .checksums import file_sha256

MAX_ZIP_BYTES = 4 * 1024**3
COMPLETE = ".complete"  # written last: a folder without it is an unpacking that did not finish


def is_zip(path: str | Path) -> bool:
    """A file named as a zip: a dataset to unpack, not an image or a CSV."""
    return Path(path).is_file() and Path(path).suffix.lower() == ".zip"


def _checked(archive: Path) -> zipfile.ZipFile:
    """The open archive, once every entry is known to stay inside the extraction folder and the total is sane."""
    try:
        handle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        reason = "not a valid zip file" if isinstance(exc, zipfile.BadZipFile) else f"cannot be read ({exc})"
        raise BloodmlError(f"{archive}: {reason}; re-create the archive.")
    total = 0
    for info in handle.infolist():
        name = info.filename
        if name.startswith("/") or ".." in Path(name).parts or (info.external_attr >> 16) & 0o170000 == 0o120000:
            handle.close()
            raise BloodmlError(f"{archive}: entry '{name}' would be written outside the extraction folder "
                               f"(zip-slip or symlink); rebuild the zip with plain relative paths.")
        total += info.file_size
        if total > MAX_ZIP_BYTES:
            handle.close()
            raise BloodmlError(f"{archive}: unpacks to more than {MAX_ZIP_BYTES >> 30} GiB; unzip it yourself.")
    return handle


def _unpack(handle: zipfile.ZipFile, archive: Path, target: Path) -> None:
    try:
        handle.extractall(target)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BloodmlError(f"{archive}: damaged zip ({exc}); re-create the archive.")


def _top(folder: Path) -> Path:
    """The archive's single top folder when it has one (``cells.zip`` holding ``cells/...``), else the folder."""
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def extract_zip(archive: Path, workdir: Path | None = None) -> Path:
    """Unpack a dataset zip, refusing entries that would escape the folder (zip-slip) before writing anything.
    Into a fresh folder inside ``workdir`` when given, else into the cache (:func:`unzipped`). Returns the
    dataset's top folder."""
    archive = Path(archive)
    if workdir is None:
        return unzipped(archive)
    with _checked(archive) as handle:
        target = Path(tempfile.mkdtemp(prefix="bloodml-zip-", dir=workdir))
        try:
            _unpack(handle, archive, target)
        except BloodmlError:
            shutil.rmtree(target, ignore_errors=True)
            raise
    return _top(target)


def unzipped(archive: Path) -> Path:
    """The archive unpacked once into ``<cache>/unzipped/<sha256>``: staged beside it and renamed into place when
    complete, so an interrupted unpacking is never read and is redone by the next run."""
    archive = Path(archive)
    home = cache_root() / "unzipped" / file_sha256(archive)[:32]
    if (home / COMPLETE).is_file():  # its entries were checked when it was unpacked
        return _top(home / "files")
    with _checked(archive) as handle:
        try:
            home.parent.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=home.parent))
        except OSError as exc:
            raise BloodmlError(f"{archive}: cannot unpack it into {home.parent} ({exc.strerror or exc}); set "
                               f"BLOODML_CACHE to a writable folder, or unzip it and pass data=<the folder>.")
        try:
            _unpack(handle, archive, stage / "files")
            (stage / COMPLETE).write_text(f"{archive.name}\n")
            if not (home / COMPLETE).is_file():  # else another process finished first: use its copy
                shutil.rmtree(home, ignore_errors=True)  # an unfinished earlier attempt
                stage.rename(home)
        except OSError as exc:
            raise BloodmlError(f"{archive}: cannot unpack it into {home.parent} ({exc.strerror or exc}); free some "
                               f"space or set BLOODML_CACHE to another folder.")
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return _top(home / "files")
