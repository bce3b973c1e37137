"""TorchDevice and the torch.ao runners leave the process's thread count and quantized engine as they found them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import latency_models.torch_ops as torch_ops
from latency_models import DeviceSpec, OpKey
from latency_models.devices import TorchDevice
from latency_models.torch_ops import ENGINE, op_runner, quantized_engine
from search_spaces import decode

ARCH = decode("r32_i1_n10:stem_c8_s2_re6:ir_k3_e3_c8_re6:head_c16_re6:fc_c8_re6")
OP = OpKey("pw", 8, 8, 8, 16, 1, 1, "relu6", False, 0)
# The engine a caller had before: anything but the one the runners use, so that leaking it shows.
OTHER = next((e for e in ("qnnpack", "fbgemm", "onednn") if e in torch.backends.quantized.supported_engines
              and e != ENGINE), None)


@pytest.fixture
def caller_state() -> Iterator[tuple[int, str]]:
    """A thread count and engine unlike the spec's (1 thread, x86), put back after the test."""
    if OTHER is None:
        pytest.skip("no second quantized engine in this PyTorch build")
    threads, engine = torch.get_num_threads(), torch.backends.quantized.engine
    torch.set_num_threads(3)
    torch.backends.quantized.engine = OTHER
    try:
        yield 3, OTHER
    finally:
        torch.set_num_threads(threads)
        torch.backends.quantized.engine = engine


def test_quantized_engine_restores_on_exit_and_error(caller_state: tuple[int, str]) -> None:
    with quantized_engine() as name:
        assert name == ENGINE == torch.backends.quantized.engine
        with quantized_engine():  # nested: still x86, still the caller's engine after
            pass
        assert torch.backends.quantized.engine == ENGINE
    assert torch.backends.quantized.engine == OTHER
    with pytest.raises(RuntimeError, match="boom"), quantized_engine():
        raise RuntimeError("boom")
    assert torch.backends.quantized.engine == OTHER


def test_int8_runner_build_leaves_the_engine(caller_state: tuple[int, str]) -> None:
    module, inputs = op_runner(OP, int8=True)
    assert torch.backends.quantized.engine == OTHER
    with quantized_engine(), torch.inference_mode():
        assert module(*inputs).is_quantized  # the x86-packed op runs inside the scope


@pytest.mark.parametrize("name", ["torch-int8", "torch-fp32"])
def test_timing_restores_threads_and_engine(name: str, caller_state: tuple[int, str]) -> None:
    threads, engine = caller_state
    dev = TorchDevice(DeviceSpec.make(name))
    assert len(dev.time_op(OP, reps=3)) >= 1
    assert (torch.get_num_threads(), torch.backends.quantized.engine) == (threads, engine)
    assert len(dev.time_arch(ARCH, reps=3)) >= 1
    assert (torch.get_num_threads(), torch.backends.quantized.engine) == (threads, engine)
    run = dev.prepare_arch(ARCH)
    assert (torch.get_num_threads(), torch.backends.quantized.engine) == (threads, engine)
    run()  # timed directly by validation.measure_archs: each call restores as well
    assert (torch.get_num_threads(), torch.backends.quantized.engine) == (threads, engine)


class _Recorder(nn.Module):
    """Records the thread count and engine each call runs under."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[int, str]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add((torch.get_num_threads(), torch.backends.quantized.engine))
        return x


@pytest.mark.parametrize("threads", [1, 2])
def test_measurement_runs_at_the_spec_threads_and_engine(threads: int, caller_state: tuple[int, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _Recorder()
    monkeypatch.setattr(torch_ops, "op_runner", lambda op, int8: (rec, (torch.zeros(1),)))
    monkeypatch.setattr(torch_ops, "network_runner", lambda arch, int8: (rec, (torch.zeros(1),)))
    dev = TorchDevice(DeviceSpec.make("torch-int8", threads=threads))
    dev.time_op(OP, reps=3)
    dev.time_arch(ARCH, reps=3)
    dev.prepare_arch(ARCH)()
    assert rec.seen == {(threads, ENGINE)}
    assert (torch.get_num_threads(), torch.backends.quantized.engine) == caller_state
