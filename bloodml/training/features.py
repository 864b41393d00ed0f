"""Backbone features for a frozen backbone: one forward pass per image and augmented view."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..cache.keys import image_keys, per_image_seed, view_key
from ..cache.store import FeatureStore
from ..compute import CPU, Compute
from ..inputs.input_spec import InputSpec
from ..inputs.transforms import Augmentation, Preprocess
from ..models.registry import Backbone


def extract_features(backbone: Backbone, preprocess: Preprocess, images: torch.Tensor, regions: torch.Tensor,
                     spec: InputSpec, batch_size: int | None = None, desc: str = "features", progress: bool = True,
                     compute: Compute = CPU) -> torch.Tensor:
    """Pooled backbone features (N, D), float32 on the CPU, computed on ``compute``'s device and precision, in
    batches of ``batch_size`` (default: the device's inference batch)."""
    batch_size = batch_size or compute.inference_batch
    backbone.eval().to(compute.device)  # outside inference mode: the moved weights stay usable for Grad-CAM
    preprocess.to(compute.device)
    out = []
    starts = range(0, len(images), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
            x = spec.network_input(compute.put(images[start:start + batch_size]),
                                   compute.put(regions[start:start + batch_size]))
            n = len(x)
            x = preprocess(compute.padded(x, batch_size)).contiguous(memory_format=torch.channels_last)
            with compute.autocast():
                out.append(backbone(x)[:n].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, backbone.feature_dim)


def augmented_view(images: torch.Tensor, regions: torch.Tensor, transform: Augmentation | None, seed: int,
                   view: int, keys: list[str], compute: Compute = CPU):
    """View ``view`` of every image, each drawn from its own seed (image content + view + seed), so an image's
    view is the same whichever split or batch it is in, on whatever device; the global RNG is left untouched."""
    if transform is None or not len(keys):
        return images, regions
    drawn = [transform.draw(1, torch.Generator().manual_seed(per_image_seed(seed, view, key))) for key in keys]
    params = {name: torch.cat([d[name] for d in drawn]) for name in drawn[0]}
    moved, moved_regions = transform.apply(compute.put(images), compute.put(regions), params)
    return moved.cpu(), moved_regions.cpu()


def view_features(store, model: str, backbone: Backbone, preprocess: Preprocess, images: torch.Tensor,
                  regions: torch.Tensor, keys: list[str], spec: InputSpec, transform, seed: int, view: int,
                  progress: bool = False, desc: str = "features", compute: Compute = CPU) -> torch.Tensor:
    """Features of one view of every image, through the cache: only missing images are augmented and run."""
    def missing(index):
        idx = torch.as_tensor(index)
        view_images, view_regions = augmented_view(images[idx], regions[idx], transform, seed, view,
                                                   [keys[i] for i in index], compute)
        return extract_features(backbone, preprocess, view_images, view_regions, spec, desc=desc,
                                progress=progress, compute=compute)
    return store.features(model, view_key(transform, view, seed), keys, missing)


@dataclass
class FrozenFeatures:
    """One frozen backbone's features through the cache, for training and then for evaluation: the training views,
    the validation images the head is checked on each epoch, and the test images (once, when evaluated).
    ``model`` is the backbone's cache key."""
    store: FeatureStore
    model: str
    backbone: Backbone
    preprocess: Preprocess
    spec: InputSpec
    seed: int
    compute: Compute = CPU
    progress: bool = False

    def of(self, images: torch.Tensor, regions: torch.Tensor, transform: Augmentation | None = None, view: int = 0,
           keys: list[str] | None = None, desc: str = "features") -> torch.Tensor:
        keys = keys if keys is not None else image_keys(images, regions)
        return view_features(self.store, self.model, self.backbone, self.preprocess, images, regions, keys, self.spec,
                             transform, self.seed, view, self.progress, desc, self.compute)
