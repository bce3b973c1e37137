"""Where and in what precision training runs: `TrainBackend`, chosen once by `resolve` before any work.

>>> backend = resolve("auto", "fp32")       # cuda:0 when PyTorch sees a GPU, else the CPU
>>> model = backend.module(model)            # parameters onto the device (a no-op on the CPU)
>>> with backend.autocast():                 # mixed precision (a no-op for fp32)
...     loss = F.cross_entropy(model(backend.tensor(x[idx])), backend.tensor(y[idx]))
>>> scaler.scale(loss).backward(); scaler.step(opt); scaler.update()   # scaler = backend.grad_scaler()

Every training loop (stand-alone training, supernet training, fine-tunes and QAT) and the evaluation helpers run
this same code on the CPU and on a GPU: on the CPU the device moves return their input, autocast is a null
context for fp32 and the disabled grad scaler calls `opt.step()` itself, so CPU fp32 results are bit-identical to
a loop without them. Data stays on the CPU and each batch is moved as it is used; models handed back to callers
are on the CPU (export and latency measurement run there). The kernel library's training ops
(`nas.kernels.training`) run only for CPU fp32 (`uses_cpu_kernels`); elsewhere PyTorch's own ops do the work.

Like the thread count, the back end is not part of any cache key: a supernet trained on a GPU is reused on a CPU
and vice versa (results differ by floating-point summation order only).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nas import cpuinfo
from nas.checks import PRECISIONS, check_precision, check_train_device, check_train_workers
from nas.cpuinfo import cpu_model
from nas.kernels.training import fast_depthwise, training_kernels

DEVICE_FLAG = "--train-device"  # the latency target is --device
PRECISION_FLAG = "--precision"
WORKERS_FLAG = "--train-workers"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE = re.compile(r"^(cpu|cuda:(0|[1-9]\d{0,3}))$")
# /proc/cpuinfo flags of the CPU bf16 instructions oneDNN's bf16 kernels use; without them autocast emulates bf16
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class TrainBackend:
    """A compute device (`cpu` or `cuda:N`), a training precision (`fp32`, `bf16` or `fp16`) and the number of
    data-parallel workers the supernet trains on (1: in this process; more: Ray Train workers, each on a device of
    the same type, `nas.supernet.distributed`; they also run the verify step's fine-tunes in parallel).

    Construct it with `resolve` (which checks the machine can run it); the default is CPU fp32, one worker.
    """

    device: str = "cpu"
    precision: str = "fp32"
    workers: int = 1

    def __post_init__(self) -> None:
        if not _DEVICE.match(self.device):
            raise ValueError(f"device: expected 'cpu' or 'cuda:N', got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"{WORKERS_FLAG}: expected a positive number of workers, got {self.workers!r}")

    @property
    def device_type(self) -> str:
        """`cpu` or `cuda` (what `torch.autocast` and `torch.amp.GradScaler` take)."""
        return self.device.partition(":")[0]

    @property
    def is_cuda(self) -> bool:
        """Whether training runs on a GPU."""
        return self.device_type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        """The autocast compute dtype (`torch.float32` for fp32: no autocast)."""
        return _DTYPES[self.precision]

    @property
    def uses_cpu_kernels(self) -> bool:
        """Whether the kernel library's float32 training ops (`nas.kernels.training`) run: on the CPU in fp32 only."""
        return self.device_type == "cpu" and self.precision == "fp32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed-precision autocast for forward passes and losses; a null context for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler for fp16 (its gradients underflow without one); disabled otherwise, where `step(opt)` is
        just `opt.step()`."""
        return torch.amp.GradScaler(self.device_type, enabled=self.precision == "fp16")

    def module(self, model: nn.Module) -> nn.Module:
        """`model` with its parameters and buffers on the device (the same object; nothing moves on the CPU)."""
        return model.to(self.device)

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A CPU tensor (a batch) on the device: `t` itself on the CPU; on a GPU copied from pinned memory without
        blocking, so the copy overlaps the previous step's kernels."""
        if not self.is_cuda:
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    @contextlib.contextmanager
    def placed(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block, `model` (a caller's model, on the CPU) is on the device; afterwards back on the CPU."""
        self.module(model)
        try:
            yield model
        finally:
            model.to("cpu")

    @contextlib.contextmanager
    def training(self, model: nn.Module) -> Iterator[nn.Module]:
        """Around a training loop: the kernel library's depthwise weight gradient and fake quantization for CPU
        fp32 (`nas.kernels.training.fast_depthwise`), PyTorch's own ops otherwise (they step aside cleanly)."""
        with training_kernels(self.uses_cpu_kernels):
            if self.uses_cpu_kernels:
                with fast_depthwise(model):
                    yield model
            else:
                yield model

    def to_dict(self) -> dict[str, Any]:
        """What summaries and checkpoints record about the back end: device, precision, the hardware's name and
        the number of data-parallel training workers."""
        return {"device": self.device, "precision": self.precision, "hardware": hardware_name(self.device),
                "workers": self.workers}


CPU = TrainBackend()  # the default everywhere: CPU fp32 with the kernel library's training ops


def hardware_name(device: str) -> str:
    """A readable name of the hardware behind `device` (the CPU model, or the GPU's name)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def cpu_bf16_support() -> str | None:
    """The CPU feature that makes bf16 autocast fast here (`amx_bf16` or `avx512_bf16`), or None.

    Reads /proc/cpuinfo's flags; where it cannot be read, asks PyTorch's own CPU probes.
    """
    flags = cpuinfo.cpu_flags()
    if flags:
        return next((f for f in CPU_BF16_FLAGS if f in flags), None)
    probes = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    return next((name for name, probe in probes if getattr(torch.cpu, probe, lambda: False)()), None)


def resolve(device: str = "auto", precision: str = "fp32", *, workers: int = 1, cuda_devices: int | None = None,
            cpu_bf16: bool | None = None, cuda_bf16: bool | None = None) -> TrainBackend:
    """The back end the flags `--train-device` and `--precision` ask for, checked against this machine.

    `auto` is `cuda:0` when PyTorch sees a GPU, else `cpu`; `cuda` is `cuda:0`. Raises `ValueError` with one line
    naming the flag for a value that is malformed or that this machine cannot run (no such GPU; bf16 on a CPU
    without AMX-BF16 or AVX512-BF16, where autocast emulates it many times slower than fp32; fp16 on a CPU).
    `cuda_devices`, `cpu_bf16` and `cuda_bf16` replace what is probed (GPUs PyTorch sees, CPU bf16 instructions,
    the GPU's bf16 support), so tests can check the decisions for hardware this machine does not have.
    `workers` (`--train-workers`) must be a positive whole number; whether a Ray cluster can host them is
    Ray's question when training starts.
    """
    text = check_train_device(DEVICE_FLAG, device)
    prec = check_precision(PRECISION_FLAG, precision)
    if cuda_devices is None:
        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if text == "auto":
        text = "cuda:0" if cuda_devices > 0 else "cpu"
    elif text == "cuda":
        text = "cuda:0"
    if text.startswith("cuda"):
        index = int(text.partition(":")[2])
        if cuda_devices == 0:
            build = "" if torch.version.cuda else ", a CPU-only build"
            raise ValueError(f"{DEVICE_FLAG}: {device!r} asks for a GPU, but PyTorch ({torch.__version__}{build}) "
                             f"sees none here; use --train-device cpu (or auto)")
        if index >= cuda_devices:
            raise ValueError(f"{DEVICE_FLAG}: {device!r}, but PyTorch sees {cuda_devices} GPU(s) here "
                             f"(cuda:0 to cuda:{cuda_devices - 1})")
        text = f"cuda:{index}"  # leading zeros and the like: one spelling
        if prec == "bf16":
            supported = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
            if not supported:
                raise ValueError(f"{PRECISION_FLAG}: bf16 needs a GPU with bf16 arithmetic, which {text} lacks; "
                                 f"use fp16 or fp32")
    elif prec == "fp16":
        raise ValueError(f"{PRECISION_FLAG}: fp16 needs a GPU (CPUs have no fast fp16 training path); on the CPU "
                         f"use fp32, or bf16 where the CPU has AMX-BF16 or AVX512-BF16")
    elif prec == "bf16":
        supported = cpu_bf16_support() is not None if cpu_bf16 is None else cpu_bf16
        if not supported:
            raise ValueError(f"{PRECISION_FLAG}: bf16 on the CPU needs AMX-BF16 or AVX512-BF16, which this CPU "
                             f"({cpu_model()}) lacks (autocast would emulate bf16, many times slower than fp32); "
                             f"use fp32")
    return TrainBackend(text, prec, check_train_workers(WORKERS_FLAG, workers))
