"""Where region maps come from when a spec says ``masks_from`` auto or model: a logged segmenter, loaded once per
process, pinned to the run that logged it, checked against the regions the mask mode needs."""

from __future__ import annotations

import functools
from dataclasses import replace

from ..inputs.input_spec import InputSpec
from ..errors import BloodmlError
from ..tracking.model import load_segmenter
from ..tracking.registry import model_uri, source_run
from .network import LoadedSegmenter

# The regions a mask mode needs the segmenter to know (any one of them for the cell modes).
NEEDED = {"cell": ("cytoplasm", "nucleus"), "crop_cell": ("cytoplasm", "nucleus"), "crop": ("cytoplasm", "nucleus"),
          "nucleus": ("nucleus",), "background": ("cytoplasm", "nucleus")}


def pinned(reference: str) -> str:
    """``runs:/<id>/segmenter`` for any reference (a registry alias moves; the run it named does not)."""
    uri = model_uri(reference, "segmenter")
    try:
        run_id = source_run(uri)
    except Exception:  # noqa: BLE001 - an unknown name or alias: load_segmenter says it in one line
        return uri
    return f"runs:/{run_id}/segmenter" if run_id and uri.startswith("models:/") else uri


@functools.lru_cache(maxsize=8)
def loaded_segmenter(uri: str) -> LoadedSegmenter:
    model, meta = load_segmenter(uri)
    return LoadedSegmenter(model.predict, meta.get("image_size", 128), uri, meta.get("regions", []),
                           meta.get("trained_on_sha256", []))


def segmenter_for(spec: InputSpec) -> LoadedSegmenter | None:
    """The segmenter a spec names (None when it uses expert masks only), refused if it cannot draw what the mask
    mode keeps."""
    if not spec.segmented:
        return None
    if not spec.segmenter:
        raise BloodmlError(f"masks_from={spec.masks_from} needs a segmenter; add segmenter=<runs:/<id>/segmenter or "
                           f"models:/<name>@<alias>>.")
    segmenter = loaded_segmenter(spec.segmenter)
    needed = NEEDED.get(spec.mask_mode, ())
    if needed and not set(needed) & set(segmenter.regions):
        raise BloodmlError(f"{segmenter.uri}: this segmenter was trained on masks with the regions "
                           f"{', '.join(segmenter.regions) or 'none'}; masks={spec.mask_mode} needs "
                           f"{' or '.join(needed)}. Train a segmenter on masks that mark them.")
    return segmenter


def with_masks_from(spec: InputSpec, masks_from: str, segmenter: str = "") -> InputSpec:
    """A model's spec with another source of region maps (evaluate/predict on images without masks)."""
    if masks_from in ("", "expert") or not spec.masked:
        return spec
    if masks_from.startswith("model:"):
        return replace(spec, masks_from="model", segmenter=pinned(masks_from[len("model:"):]))
    return replace(spec, masks_from=masks_from, segmenter=pinned(segmenter or spec.segmenter))
