"""Where and in what precision tensors are computed: one :class:`Compute`, resolved once per process from the
``device`` and ``precision`` parameters and passed down to every trainer, evaluation and prediction.

CPU is a device like any other: ``device=auto`` picks CUDA, then Apple's MPS, then the CPU; ``precision=auto``
picks bf16 autocast on a CUDA device that supports it, fp16 with a gradient scaler on one that does not, and fp32
elsewhere (bf16 is several times slower than fp32 on CPUs without native support).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .parallel import parallel

from .errors import BloodmlError

DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def send(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A small host tensor (augmentation parameters, indices, constants) to ``device`` without waiting for the
    device: a plain copy from pageable host memory to a GPU synchronises the stream, so a few per step keep the
    host from queueing the next batch while the GPU works. Pinned memory, non-blocking copy; as it is elsewhere."""
    if dtype is not None and tensor.device.type == "cpu":
        tensor = tensor.to(dtype)
    if torch.device(device).type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device=device, dtype=dtype)
    return (tensor if tensor.is_pinned() else tensor.pin_memory()).to(device, non_blocking=True)


@dataclass(frozen=True)
class Compute:
    device: torch.device
    precision: str  # fp32, bf16 or fp16 (resolved)
    fixed_shapes: bool | None = None  # pad short batches to one shape (None: on a GPU, not on the CPU)

    @property
    def name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        if self.device.type == "mps":
            return "Apple MPS"
        return f"CPU ({torch.get_num_threads()} threads)"

    def autocast(self):
        """Mixed precision for the forward pass (a no-op in fp32)."""
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, needed by fp16 only (disabled otherwise: step() then just steps)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def put(self, tensor: torch.Tensor) -> torch.Tensor:
        """To the device without waiting (pinned host memory when the device is a GPU)."""
        return tensor if self.device.type == "cpu" else send(tensor, self.device)

    def padded(self, batch: torch.Tensor, size: int) -> torch.Tensor:
        """On a GPU, a short batch is padded with zeros to ``size`` rows, so that every batch has one shape: the
        convolution libraries plan each new shape anew, which cost seconds per fold in a study. Rows past the
        original length are to be dropped from the result; in eval mode they change nothing else. On the CPU the
        batch is returned as it is."""
        fixed = self.device.type != "cpu" if self.fixed_shapes is None else self.fixed_shapes
        if not fixed or len(batch) >= size:
            return batch
        return torch.cat([batch, batch.new_zeros((size - len(batch), *batch.shape[1:]))])

    @property
    def inference_batch(self) -> int:
        """Images per forward pass without gradients (cached features, validation, evaluation). A CPU runs small
        batches faster per image (their activations stay in its caches; on the 2-core development machine 16
        images ran 1.2-1.3x faster per image than 64 for efficientnet_lite0 and resnet50, and the same for vgg16);
        a GPU wants full batches. Per image the results do not depend on the batch."""
        return 16 if self.device.type == "cpu" else 64

    def resident(self, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor the trainer reads every epoch, kept on the GPU once (small datasets: 300 images at 224 px are
        45 MB) instead of copied batch by batch; left on the host on the CPU."""
        return tensor if self.device.type == "cpu" else self.put(tensor)


CPU = Compute(torch.device("cpu"), "fp32")


def resolve(device: str = "auto", precision: str = "auto") -> Compute:
    """The device and precision asked for, or a one-line error saying what this machine has."""
    device = device.strip().lower()
    if device == "auto":
        if torch.cuda.is_available():  # under torchrun, each process its own GPU
            chosen = torch.device("cuda", parallel().local_rank) if parallel().several else torch.device("cuda")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            chosen = torch.device("mps")
        else:
            chosen = torch.device("cpu")
    elif device == "cpu":
        chosen = torch.device("cpu")
    elif device == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise BloodmlError("device=mps: no Apple GPU available here; use device=auto or device=cpu.")
        chosen = torch.device("mps")
    elif device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise BloodmlError(f"device={device}: no CUDA GPU is available here (torch {torch.__version__}); use "
                               f"device=auto or device=cpu.")
        chosen = torch.device(device)
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise BloodmlError(f"device={device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                               f"(cuda:0 ...); pick one of them.")
    else:
        raise BloodmlError(f"device='{device}' is unknown; use auto, cpu, cuda, cuda:N or mps.")
    return Compute(chosen, _precision(precision.strip().lower(), chosen))


def _precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise BloodmlError(f"precision='{precision}' is unknown; use one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise BloodmlError("precision=fp16 needs a GPU; on the CPU use fp32 (or bf16 where the CPU supports it).")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"
