"""Reading images and masks safely, from disk or from bytes (a served request): one clear error per bad file,
never a traceback."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BloodmlError

IMAGE_EXTENSIONS = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp"}
# Single cells are small; anything above this is not a cell crop and may be a decompression bomb.
MAX_PIXELS = 50_000_000


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


ImageSource = Path | str | bytes  # a file's path, or a file's bytes (then errors name the caller's ``name``)


def _open(source: ImageSource, name: str = "") -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        path = name or "image"
        if not source:
            raise BloodmlError(f"{path}: empty (0 bytes); send the bytes of a PNG/JPEG/BMP/TIFF file.")
        opened = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise BloodmlError(f"{path}: file not found; fix the path or remove its row from the label file.")
        if path.stat().st_size == 0:
            raise BloodmlError(f"{path}: empty file (0 bytes); replace it or remove it from the dataset.")
        opened = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(opened)
            if image.width * image.height > MAX_PIXELS:
                raise BloodmlError(
                    f"{path}: {image.width}x{image.height} pixels is too large for a single-cell image "
                    f"(limit {MAX_PIXELS:,}); crop or downscale it first."
                )
            image.load()
            # as every viewer shows it (and annotation tools drew its mask): a camera's EXIF rotation applied
            ImageOps.exif_transpose(image, in_place=True)
    except BloodmlError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BloodmlError(f"{path}: image is too large (decompression-bomb guard); crop or downscale it first.")
    except UnidentifiedImageError:
        raise BloodmlError(f"{path}: not a readable image; replace it with a valid PNG/JPEG/BMP/TIFF or remove it.")
    except (OSError, SyntaxError, ValueError) as exc:
        raise BloodmlError(f"{path}: corrupt or truncated image ({exc}); replace it or remove it from the dataset.")
    return image


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        top = 65535 if array.max(initial=0) > 255 else 255
        return (array.astype(np.float64) * (255.0 / top)).round().astype(np.uint8)
    array = np.nan_to_num(array.astype(np.float64))
    top = 1.0 if array.max(initial=0) <= 1.0 else 255.0
    return np.clip(array / top * 255.0, 0, 255).round().astype(np.uint8)


def read_rgb(source: ImageSource, name: str = "") -> np.ndarray:
    """An image (a path, or a file's bytes) as an (H, W, 3) uint8 RGB array, whatever its mode (grey, palette,
    16-bit, CMYK, alpha)."""
    image = _open(source, name)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = _to_uint8(np.asarray(image))
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGBA").convert("RGB") if "A" in image.mode or image.mode == "P" else image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def read_mask_array(source: ImageSource, name: str = "") -> np.ndarray:
    """A mask (a path, or a file's bytes) as an (H, W) grey or (H, W, 3) RGB uint8 array, keeping its codes exact
    (no colour management)."""
    image = _open(source, name)
    if image.mode == "P":
        image = image.convert("RGB")
    if image.mode in ("RGBA", "LA"):
        image = image.convert(image.mode[:-1])
    if image.mode in ("1", "L", "I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image)
        if image.mode == "1":
            return array.astype(np.uint8)
        return array if array.dtype == np.uint8 else _to_uint8(array)
    if image.mode != "RGB":
        image = image.convert("RGB")
    rgb = np.asarray(image, dtype=np.uint8)
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0].copy()
    return rgb.copy()


def unreadable_files(paths: list[str | Path]) -> dict[str, str]:
    """Every file among ``paths`` that cannot be read as an image, with its one-line reason (empty in the common
    case); each file is decoded once."""
    reasons = {}
    for path in paths:
        try:
            _open(path).close()
        except BloodmlError as exc:
            reasons[str(path)] = str(exc)
    return reasons


def unreadable_summary(messages: list[str], shown: int = 3) -> str:
    """The first ``shown`` of several unreadable-file messages, each without its fix ('path: reason'), and how many
    more there are: the middle of one line that names every file's problem at once."""
    reasons = "; ".join(message.rsplit("; ", 1)[0] for message in messages[:shown])
    return reasons + (f"; and {len(messages) - shown} more" if len(messages) > shown else "")


def files_error(messages: list[str], what: str, fix: str) -> str:
    """One line for several files' problems: the one file's own message, or how many ``what``, the first few and
    ``fix``."""
    if len(messages) == 1:
        return messages[0]
    return f"{len(messages)} {what}: {unreadable_summary(messages)}; {fix}."


def first_few(items: list, shown: int = 3) -> str:
    """The first ``shown`` items of a one-line note, then '...' when there are more."""
    return ", ".join(map(str, items[:shown])) + (" ..." if len(items) > shown else "")
