"""Backbone features for a frozen backbone: one forward pass per image and augmented view."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..cache.keys import per_image_seed, view_key
from ..data.input_spec import InputSpec
from ..data.transforms import Preprocess, augment
from ..models.registry import Backbone


@torch.inference_mode()
def extract_features(backbone: Backbone, preprocess: Preprocess, images: torch.Tensor, regions: torch.Tensor,
                     spec: InputSpec, batch_size: int = 64, desc: str = "features",
                     progress: bool = True) -> torch.Tensor:
    backbone.eval()
    out = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        x = spec.network_input(images[start:start + batch_size], regions[start:start + batch_size])
        out.append(backbone(preprocess(x).contiguous(memory_format=torch.channels_last)))
    return torch.cat(out) if out else torch.zeros(0, backbone.feature_dim)


def augmented_view(images: torch.Tensor, regions: torch.Tensor, transform, seed: int, view: int,
                   keys: list[str]):
    """View ``view`` of every image, each drawn from its own seed (image content + view + seed), so an image's
    view is the same whichever split or batch it is in, and the global RNG is left untouched."""
    if transform is None:
        return images, regions
    out_images, out_regions = [], []
    with torch.random.fork_rng(devices=[]):
        for image, region, key in zip(images, regions, keys):
            torch.manual_seed(per_image_seed(seed, view, key))
            a, b = augment(image[None], region[None], transform)
            out_images.append(a[0])
            out_regions.append(b[0])
    return torch.stack(out_images), torch.stack(out_regions)


def view_features(store, model: str, backbone: Backbone, preprocess: Preprocess, images: torch.Tensor,
                  regions: torch.Tensor, keys: list[str], spec: InputSpec, transform, seed: int, view: int,
                  progress: bool = False, desc: str = "features") -> torch.Tensor:
    """Features of one view of every image, through the cache: only missing images are augmented and run."""
    def compute(index):
        idx = torch.as_tensor(index)
        view_images, view_regions = augmented_view(images[idx], regions[idx], transform, seed, view,
                                                   [keys[i] for i in index])
        return extract_features(backbone, preprocess, view_images, view_regions, spec, desc=desc,
                                progress=progress)
    return store.features(model, view_key(transform, view, seed), keys, compute)
