"""Devices a latency table can be built for, behind one interface.

- `kernels`: the custom int8/int4 kernel library `nas.kernels` (the executor our quantized networks run on).
- `torch-fp32`: PyTorch eager fp32, batch norm folded.
- `torch-int8`: PyTorch torch.ao FX int8 on the x86 engine (what a user deploying with PyTorch runs).
- `ort-int8`: ONNX Runtime's CPU execution provider running the QDQ graph `nas export` writes.
- `ort-fp32`: ONNX Runtime's CPU execution provider running the same graph without Q/DQ (batch norm folded).

A `DeviceSpec` names a device plus the settings that change its speed (bits, threads, forced ISA); its
`table_id` names the table file, e.g. `kernels`, `kernels-int4`, `torch-fp32-t2`, `ort-int8-t2`.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from latency_models.ops import OpKey
from nas import __version__, cpuinfo
from nas.cores import torch_threads
from nas.cpuinfo import cpu_model
from nas.timing import time_calls
from search_spaces import Arch

try:  # the compiled kernel library: without it the PyTorch devices still work and the kernels device says why
    import nas.kernels as _kernels
except ImportError as _exc:
    _kernels = kernel_runner = None
    _KERNELS_ERROR: ImportError | None = _exc
else:  # outside the `try`: an error in the runner itself is a bug to show, not a missing library
    from latency_models import kernel_runner

    _KERNELS_ERROR = None

DEVICE_NAMES = ("kernels", "torch-fp32", "torch-int8", "ort-int8", "ort-fp32")
# weight bits each device runs; the first is its natural width (left out of the table id)
DEVICE_BITS = {"kernels": (8, 4), "torch-fp32": (32,), "torch-int8": (8,), "ort-int8": (8,), "ort-fp32": (32,)}
# Fingerprint fields that must agree for a table to describe this machine and library.
MATCH_FIELDS = ("device", "cpu_model", "isa", "threads", "bits", "library", "library_version", "build_hash", "graph")


@dataclass(frozen=True)
class DeviceSpec:
    """A device and the settings a table is specific to."""

    name: str = "kernels"
    bits: int = 8
    threads: int = 1
    isa: str | None = None  # forced ISA (kernels only); None = the library's best for this CPU

    def __post_init__(self) -> None:
        if self.name not in DEVICE_NAMES:
            raise ValueError(f"device: expected one of {list(DEVICE_NAMES)}, got {self.name!r}")
        if self.threads < 1:
            raise ValueError(f"threads: expected >= 1, got {self.threads}")
        allowed = DEVICE_BITS[self.name]
        if self.bits not in allowed:
            raise ValueError(f"bits: device {self.name!r} supports {list(allowed)}, got {self.bits}")
        if self.isa is not None:
            if self.name != "kernels":
                raise ValueError(f"isa: only the 'kernels' device takes a forced ISA, not {self.name!r}")
            isas = _kernels_module().ISAS
            if self.isa not in isas:
                raise ValueError(f"isa: expected one of {isas}, got {self.isa!r}")

    @classmethod
    def make(cls, name: str, bits: int | None = None, threads: int = 1, isa: str | None = None) -> DeviceSpec:
        """A spec with the device's natural bit width when `bits` is None; `name` may be a full table id."""
        m = re.fullmatch(rf"({'|'.join(DEVICE_NAMES)})(?:-int(\d+))?(?:-t(\d+))?(?:-([a-z0-9_]+))?", name)
        if m is None:
            raise ValueError(f"device: expected one of {list(DEVICE_NAMES)} (optionally with -int4, -tN, -ISA "
                             f"suffixes), got {name!r}")
        name = m.group(1)
        bits = bits if bits is not None else int(m.group(2)) if m.group(2) else DEVICE_BITS[name][0]
        threads = int(m.group(3)) if m.group(3) and threads == 1 else threads
        return cls(name, bits, threads, isa or m.group(4))

    @property
    def fused_threads(self) -> int | None:
        """The thread count at which this device runs inverted-residual blocks as fused ops (`kernels`: its
        executor fuses a block where `nas.kernels.memory.block_fuses` says so at `threads`), or None for a device
        that runs every layer alone (ONNX Runtime, PyTorch): what decides whether its tables get fused-block rows."""
        return self.threads if self.name == "kernels" else None

    @property
    def table_id(self) -> str:
        natural = DEVICE_BITS[self.name][0]
        return (self.name + (f"-int{self.bits}" if self.bits != natural else "")
                + (f"-t{self.threads}" if self.threads != 1 else "") + (f"-{self.isa}" if self.isa else ""))


class Device(Protocol):
    spec: DeviceSpec

    def fingerprint(self) -> dict[str, Any]: ...

    def time_op(self, op: OpKey, reps: int) -> list[float]: ...

    def prepare_arch(self, arch: Arch) -> Callable[[], object]: ...

    def time_arch(self, arch: Arch, reps: int) -> list[float]: ...


def _base_fingerprint(spec: DeviceSpec) -> dict[str, Any]:
    return {"device": spec.name, "table_id": spec.table_id, "bits": spec.bits, "threads": spec.threads,
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "hostname": platform.node(), "nas_version": __version__}


@dataclass
class TorchDevice:
    """PyTorch eager fp32 or torch.ao int8 (x86 engine); PyTorch is imported when it is used, so the other devices
    run without it."""

    spec: DeviceSpec
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def int8(self) -> bool:
        return self.spec.name == "torch-int8"

    def fingerprint(self) -> dict[str, Any]:
        import torch

        fp = _base_fingerprint(self.spec)
        fp.update(isa=torch.backends.cpu.get_cpu_capability(), library="torch", library_version=torch.__version__,
                  build_hash=torch.version.git_version[:12],
                  engine="x86" if self.int8 else "eager-fp32")
        return fp

    @contextmanager
    def scoped(self) -> Iterator[None]:
        """The spec's thread count (and for int8 the x86 quantized engine) inside the block, the caller's after.

        Cheap when nested or already in force (nothing is set), so runners can enter it on every call.
        """
        from latency_models import torch_ops

        with torch_threads(self.spec.threads), (
                torch_ops.quantized_engine(torch_ops.ENGINE) if self.int8 else nullcontext()):
            yield

    def _time(self, fn: Callable[[], object], reps: int) -> list[float]:
        import torch

        with self.scoped(), torch.inference_mode():
            return time_calls(fn, reps=reps)

    def time_op(self, op: OpKey, reps: int) -> list[float]:
        from latency_models import torch_ops

        with self.scoped():  # built at the thread count it is timed at, as before the scoping
            module, inputs = torch_ops.op_runner(op, self.int8)
        return self._time(lambda: module(*inputs), reps)

    def prepare_arch(self, arch: Arch) -> Callable[[], object]:
        """A zero-argument call running the whole network once (built and quantized up front); each call runs
        at the spec's thread count (and engine) and leaves the caller's in place."""
        import torch

        from latency_models import torch_ops

        with self.scoped():

            module, inputs = torch_ops.network_runner(arch, self.int8)

        def run() -> object:
            # callers (validation.measure_archs) time this directly, outside `_time`
            with self.scoped(), torch.inference_mode():
                return module(*inputs)
        return run

    def time_arch(self, arch: Arch, reps: int) -> list[float]:
        """Per-call times (ms) of the whole network; the caller's thread count and engine are kept."""
        with self.scoped():  # one scope for the whole timing, so the per-call scopes inside set nothing
            return self._time(self.prepare_arch(arch), reps)


def _kernels_module() -> Any:
    if _kernels is None:
        raise ValueError(f"device 'kernels': the kernel library nas.kernels cannot be imported ({_KERNELS_ERROR}); "
                         "build it (pip install -e .) or use --device torch-int8 / torch-fp32") from _KERNELS_ERROR
    return _kernels


@dataclass
class KernelDevice:
    """The custom low-bit kernel library `nas.kernels`."""

    spec: DeviceSpec

    def __post_init__(self) -> None:
        k = _kernels_module()
        if self.spec.isa is not None and self.spec.isa not in k.available_isas():
            raise ValueError(f"isa: {self.spec.isa!r} is not available on this CPU; available: "
                             f"{list(k.available_isas())}")

    def fingerprint(self) -> dict[str, Any]:
        k = _kernels_module()
        fp = _base_fingerprint(self.spec)
        fp.update(isa=self.spec.isa or k.active_isa(), library="nas.kernels",
                  library_version=str(getattr(k, "version", fp["nas_version"])), build_hash=k.build_hash())
        return fp

    def time_op(self, op: OpKey, reps: int) -> list[float]:
        return kernel_runner.time_kernel_op(op, self.spec, reps)

    def prepare_arch(self, arch: Arch) -> Callable[[], object]:
        return kernel_runner.prepare_kernel_network(arch, self.spec)


    def time_arch(self, arch: Arch, reps: int) -> list[float]:
        return time_calls(self.prepare_arch(arch), reps=reps, min_sample_s=0)


def _ort_runner(spec: DeviceSpec) -> Any:
    """`latency_models.ort_runner`, or one line naming --device when what it needs cannot be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"--device {spec.name}: ONNX Runtime cannot be imported ({exc}); install it (pip install "
                         "onnxruntime) or pick another --device (kernels, torch-int8, torch-fp32)") from exc
    if _kernels is None:
        raise ValueError(f"--device {spec.name}: the networks it times are lowered by nas.kernels, which cannot be "
                         f"imported ({_KERNELS_ERROR}); build it (pip install -e .)") from _KERNELS_ERROR
    from latency_models import ort_runner

    return ort_runner


# CPU flags ONNX Runtime's MLAS picks its kernels by, best first
_MLAS_FLAGS = ("amx_int8", "avx512_vnni", "avx512f", "avx_vnni", "avx2", "sse4_1", "asimddp", "asimd")


@dataclass
class OrtDevice:
    """ONNX Runtime's CPU execution provider running our exported graphs (`ort-int8`: QDQ, `ort-fp32`: float)."""

    spec: DeviceSpec
    _runner: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._runner = _ort_runner(self.spec)

    def fingerprint(self) -> dict[str, Any]:
        import onnxruntime as ort

        from nas.export.onnx_qdq import GRAPH_FORMAT, graph_format, weight_type

        flags = cpuinfo.cpu_flags()
        simd = next((f for f in _MLAS_FLAGS if f in flags), platform.machine())
        info = ort.get_build_info() if hasattr(ort, "get_build_info") else ""
        commit = re.search(r"git-commit-id=(\w+)", info)
        build = commit.group(1) if commit else ort.__version__
        fp = _base_fingerprint(self.spec)
        fp.update(isa=f"cpu-ep-{simd}", library="onnxruntime", library_version=ort.__version__,
                  build_hash=f"{build}:{'+'.join(ort.get_available_providers())}", provider="CPUExecutionProvider",
                  graph_optimization="ORT_ENABLE_ALL",
                  graph=GRAPH_FORMAT if self.spec.bits == 32 else graph_format(weight_type()))
        return fp

    def time_op(self, op: OpKey, reps: int) -> list[float]:
        return self._runner.time_ort_op(op, self.spec, reps)

    def prepare_arch(self, arch: Arch) -> Callable[[], object]:
        return self._runner.prepare_ort_network(arch, self.spec)

    def time_arch(self, arch: Arch, reps: int) -> list[float]:
        return time_calls(self.prepare_arch(arch), reps=reps, min_sample_s=0)


def get_device(spec: DeviceSpec | str) -> Device:
    """The device object that times ops and networks for `spec` (a spec or a table id like `kernels-int4`)."""
    if isinstance(spec, str):
        spec = DeviceSpec.make(spec)
    if spec.name == "kernels":
        return KernelDevice(spec)
    if spec.name.startswith("ort-"):
        return OrtDevice(spec)
    return TorchDevice(spec)
