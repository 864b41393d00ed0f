"""Several processes training one model (PyTorch DDP under ``torchrun``): which process this is, once per process.

``torchrun --nproc-per-node N -m bloodml.cli train ...`` starts N processes with RANK, LOCAL_RANK and WORLD_SIZE
set; the first use here joins them into one process group (NCCL on CUDA GPUs, gloo on CPUs). Process 0 is the main
one: it alone talks to MLflow and writes checkpoints. Without torchrun this is one process of one.
BLOODML_DIST_BACKEND=gloo keeps CPU processes on gloo on a machine that has GPUs.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Parallel:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def several(self) -> bool:
        return self.world > 1

    def shard(self, items: list) -> list:
        """This process's share of an epoch's batches (every process draws the same list): every ``world``-th,
        padded from the start so that every process takes as many steps (as DistributedSampler pads)."""
        if not self.several or not items:
            return items
        steps = -(-len(items) // self.world)
        padded = items + items[:steps * self.world - len(items)]
        return padded[self.rank::self.world]

    def total(self, *values: float) -> list[float]:
        """Each value summed over the processes."""
        if not self.several:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()


@lru_cache(maxsize=1)
def parallel() -> Parallel:
    """This process's place, from torchrun's environment; joins the process group the first time."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Parallel()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = os.environ.get("BLOODML_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return Parallel(rank, world, local_rank)
