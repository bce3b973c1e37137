"""A whole quantized network (plain dataclasses of NumPy arrays) executed NHWC on the kernels.

Per-layer fusion (one kernel call per ``search_spaces.layers`` entry, so per-layer timings sum to the network):
- ``stem`` / ``expand`` / ``head`` / ``hidden``: GEMM (or im2col + GEMM for the stem) + bias + requant + activation;
- ``dw``: depthwise + bias + requant + activation;
- ``se``: pool -> fc1+ReLU -> fc2+hard-sigmoid -> channel scale, one op;
- ``project``: GEMM + bias + requant, with the block's residual add fused when the block has one;
- ``pool``: global average pool; ``classifier``: GEMM writing int32 ``acc + bias``, scaled to float logits.

By default ``run`` runs each block without squeeze-excite (expand -> dw -> project, or dw -> project) whose fused
step needs no more memory than its layers (`nas.kernels.memory.fused_steps` with `memory.block_fuses`, ops.h
``fused_block_pays`` on the block's shapes: the rule the C runtime and the latency tables apply too) as one fused
op in bands of rows (``ops.FusedBlockSpec``): the same logits bit for bit from a smaller arena, since the expanded
and depthwise tensors are never materialized; ``fused=False`` runs layer by layer (the per-layer ops above, which
the latency tables time alongside the fused blocks). In both modes a squeeze-excite or stride-1 depthwise step whose
input no later step reads writes its output over that input where ops.h ``in_place_pays`` says so (the arena plan,
`nas.kernels.memory.plan`, places it there; the kernel sees overlapping buffers and runs in place). The default also
runs the stem inside the first block's banded step (``FusedBlockSpec.stem``: stem -> dw -> project, or stem -> dw
before a squeeze-excite) where `memory.stem_fuses` (ops.h ``stem_fused_pays``) says that step needs fewer bytes
and the arena shrinks with it (`memory.stem_lowers_arena`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from nas.kernels import _C, memory, reference
from nas.kernels.isa import resolve_isa
from nas.kernels.ops import (
    CompiledOp,
    DepthwiseSpec,
    FusedBlockSpec,
    GemmSpec,
    SESpec,
    Spec,
    compile_op,
    fuse,
    out_shape,
)
from nas.kernels.quant import QParams, quantize_input


@dataclass
class QuantizedLayer:
    """One fused op of the network; ``name`` and ``op`` follow ``search_spaces.Layer``."""

    name: str
    op: str
    spec: Spec


@dataclass
class QuantizedNetwork:
    """An int8 (or W4A8) network: input grid, fused layers in execution order, classifier logit scales."""

    input_q: QParams
    layers: list[QuantizedLayer]
    logit_scale: np.ndarray  # float32 [num_classes]: logits = int32 accumulator * logit_scale
    bits: int = 8
    arch: str = ""  # architecture string (search_spaces.encode) for reference
    _compiled: dict[str, list[CompiledOp]] = field(default_factory=dict, repr=False, compare=False)
    _fused: dict[tuple[str, tuple[int, ...]], CompiledOp] = field(default_factory=dict, repr=False, compare=False)
    _plans: dict[tuple, tuple] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def compile(self, isa: str | None = None) -> list[CompiledOp]:
        """Pack every layer for ``isa`` once (cached)."""
        isa = resolve_isa(isa)
        if isa not in self._compiled:
            self._compiled[isa] = [compile_op(layer.spec, isa) for layer in self.layers]
        return self._compiled[isa]

    def steps(self, shape: tuple[int, ...] | None = None, threads: int = 1) -> list[tuple[list[int], Spec]]:
        """What runs, in order, as (layer indices, spec): every layer alone (`shape` None), or for uint8 NHWC input of
        `shape` on `threads` threads, each block that `nas.kernels.memory.fused_steps` fuses as one
        ``FusedBlockSpec`` (the same decision `nas.kernels.memory.activation_plan(fused=True)` takes)."""
        if shape is None:
            return [([i], layer.spec) for i, layer in enumerate(self.layers)]
        shapes = [tuple(shape)]  # shapes[i]: layer i's input, shapes[i + 1]: its output
        for layer in self.layers:
            shapes.append(out_shape(layer.spec, shapes[-1]))

        def fused_spec(g: list[int]) -> FusedBlockSpec:
            specs = [self.layers[i].spec for i in g]
            if g[0] == 0:  # the stem and the first block's dw (-> project)
                return FusedBlockSpec(None, specs[1], specs[2] if len(g) == 3 else None, stem=specs[0])
            return FusedBlockSpec(specs[0] if len(g) == 3 else None, specs[-2], specs[-1])

        def pays(g: list[int]) -> bool:
            spec = fused_spec(g)
            n, h, w, cin = shapes[g[0]]
            c, k, _ = spec.dw.weight.shape
            if spec.stem is not None:
                project = self.layers[3 if spec.project is None else 2].spec  # the block's project
                cout = None if spec.project is None else spec.project.weight.shape[0]
                return memory.stem_fuses(n, h, w, cin, c, spec.stem.weight.shape[1], spec.stem.stride, k,
                                         spec.dw.stride, cout, getattr(project, "residual", None) is not None, threads)
            return memory.block_fuses(n, h, w, cin, c, spec.project.weight.shape[0], k, spec.dw.stride, len(g) == 3,
                                      spec.project.residual is not None, threads)

        def as_steps(groups: list[list[int]]) -> list[tuple[list[int], Spec]]:
            return [(g, self.layers[g[0]].spec if len(g) == 1 else fused_spec(g)) for g in groups]

        names = [layer.name for layer in self.layers]
        groups = memory.fused_steps(names, pays)
        if len(groups[0]) > 1:  # the stem fused only where the arena shrinks, as activation_plan
            groups = memory.stem_lowers_arena(groups, memory.fused_steps(names, pays, stem=False),
                                              lambda gs: self._arena(as_steps(gs), tuple(shape), threads)[-1]
                                              .arena_bytes)
        return as_steps(groups)

    def _arena(self, steps: list[tuple[list[int], Spec]], shape: tuple[int, ...], threads: int) -> tuple:
        """(shapes, dtypes, sizes, wires, scratch, the `memory.plan`) of `steps` on input of `shape`: every buffer
        (input, each step's output, the fused steps' scratch for `threads` threads) placed in one arena."""
        shapes, dtypes, scratch, headroom = [shape], [np.uint8], [], []
        for _, spec in steps:
            scratch.append(memory.fused_step_scratch(spec, shapes[-1], threads)
                           if isinstance(spec, FusedBlockSpec) else 0)
            headroom.append(_in_place_headroom(spec, shapes[-1], threads))
            shapes.append(out_shape(spec, shapes[-1]))
            dtypes.append(np.int32 if getattr(spec, "out_int32", False) else np.uint8)
        sizes = [int(np.prod(s)) * np.dtype(d).itemsize for s, d in zip(shapes, dtypes, strict=True)]
        wires = self._wiring(steps)
        # in-place outputs share their input's bytes
        return shapes, dtypes, sizes, wires, scratch, memory.plan(sizes, wires, scratch, headroom)

    def quantize_input(self, x: np.ndarray, fast: bool = False) -> np.ndarray:
        """Float NCHW (as for the torch model) -> uint8 NHWC on the input grid; uint8 NHWC passes through.

        ``fast`` uses the C++ conversion (float32 input; bit-identical to the NumPy path)."""
        x = np.asarray(x)
        if x.dtype == np.uint8:
            if x.ndim != 4:
                raise ValueError(f"x: expected uint8 NHWC [N, H, W, C], got shape {x.shape}")
            return np.ascontiguousarray(x)
        if x.dtype.kind != "f":
            raise TypeError(f"x: expected float NCHW or uint8 NHWC, got dtype {x.dtype}")
        if x.ndim != 4:
            raise ValueError(f"x: expected float NCHW [N, C, H, W], got shape {x.shape}")
        if fast:
            n, c, h, w = x.shape
            out = np.empty((n, h, w, c), dtype=np.uint8)
            q = self.input_q
            _C.quantize_nchw(np.ascontiguousarray(x, dtype=np.float32), np.float32(q.scale), q.zero_point, out)
            return out
        return np.ascontiguousarray(quantize_input(x.transpose(0, 2, 3, 1), self.input_q))

    def run(self, x: np.ndarray, threads: int = 1, isa: str | None = None, fused: bool = True) -> np.ndarray:
        """Float32 logits [N, num_classes] computed on the kernels (one C++ call for all steps, GIL released), with
        the blocks where fusing pays as fused ops; ``fused=False``: layer by layer (the same logits bit for bit)."""
        if not isinstance(threads, int | np.integer) or threads < 1:
            raise ValueError(f"threads: expected a positive int, got {threads!r}")
        isa = self.compile(isa)[0].isa
        x = np.asarray(x)
        with self._lock:  # the plan's buffers are reused across calls (no page faults per run)
            plan, xin, out, _ = self._planned(isa, self._input_shape(x), fused, int(threads))
            if x.dtype == np.uint8:
                np.copyto(xin, x)
            else:
                q = self.input_q
                _C.quantize_nchw(np.ascontiguousarray(x, dtype=np.float32), np.float32(q.scale), q.zero_point, xin)
            plan.run(int(threads))
            return out.astype(np.float32) * self.logit_scale[None, :]

    def _input_shape(self, x: np.ndarray) -> tuple[int, ...]:
        """NHWC shape of the quantized input (validates like :meth:`quantize_input`)."""
        if x.ndim != 4:
            raise ValueError(f"x: expected float NCHW [N, C, H, W] or uint8 NHWC, got shape {x.shape}")
        if x.dtype == np.uint8:
            return tuple(x.shape)
        if x.dtype.kind != "f":
            raise TypeError(f"x: expected float NCHW or uint8 NHWC, got dtype {x.dtype}")
        n, c, h, w = x.shape
        return (n, h, w, c)

    def _plan(self, isa: str, shape: tuple[int, ...], fused: bool, threads: int) -> tuple:
        """Every buffer (input, each step's output, the fused steps' scratch for `threads` threads) placed in one
        arena by `nas.kernels.memory.plan`, and a ``_C.Plan`` running all steps on them."""
        steps = self.steps(shape if fused else None, threads)
        layer_ops = self.compile(isa)
        ops = []
        for g, spec in steps:
            key = (isa, tuple(g))
            if len(g) > 1 and key not in self._fused:  # over the layers' packed weights, not packed again
                self._fused[key] = fuse(spec, [layer_ops[i] for i in g])  # g's layers are spec.parts(), in order
            ops.append(layer_ops[g[0]] if len(g) == 1 else self._fused[key])
        shapes, dtypes, sizes, wires, scratch, arena_plan = self._arena(steps, shape, threads)
        arena = np.empty(arena_plan.arena_bytes + memory.ALIGN, dtype=np.uint8)
        start = -arena.ctypes.data % memory.ALIGN  # offsets are multiples of ALIGN from an aligned start
        bufs = [arena[start + o:start + o + n].view(d).reshape(s) for o, n, d, s in
                zip(arena_plan.offsets[:len(sizes)], sizes, dtypes, shapes, strict=True)]
        xin, outputs = bufs[0], bufs[1:]
        scratch_bufs = iter(arena[start + o:start + o + n] for o, n in
                            zip(arena_plan.offsets[len(sizes):], arena_plan.sizes[len(sizes):], strict=True))
        xs, outs, ress, scr = [], [], [], []
        for i, (src, res) in enumerate(wires):
            spec, t = steps[i][1], (xin if src < 0 else outputs[src])
            scr.append(next(scratch_bufs) if scratch[i] else None)
            r = None if res is None else (xin if res < 0 else outputs[res])
            if isinstance(spec, GemmSpec):  # GEMMs take [M, K] / [M, N] views
                t = t.reshape(-1, t.shape[-1])
                r = None if r is None else r.reshape(-1, spec.weight.shape[0])
                outs.append(outputs[i].reshape(-1, outputs[i].shape[-1]))
            else:
                outs.append(outputs[i])
            xs.append(t)
            ress.append(r)
        plan = _C.Plan([op._op for op in ops], xs, outs, ress, scr)
        return plan, xin, outputs[-1], arena_plan

    def memory_plan(self, shape: tuple[int, ...], isa: str | None = None, fused: bool = True,
                    threads: int = 1) -> memory.MemoryPlan:
        """The arena plan `run` uses for uint8 NHWC input of `shape` on `threads` threads (planned now if not yet);
        it depends on `threads` (the fused blocks' scratch, the in-place depthwise steps' headroom)."""
        isa = self.compile(isa)[0].isa
        with self._lock:
            return self._planned(isa, tuple(shape), fused, int(threads))[3]

    def _planned(self, isa: str, shape: tuple[int, ...], fused: bool = True, threads: int = 1) -> tuple:
        """The cached plan for input `shape` on `isa` (the caller holds the lock)."""
        key = (isa, shape, fused, threads)  # fused steps' scratch and in-place depthwise headroom grow with threads
        if key not in self._plans:
            self._plans[key] = self._plan(isa, shape, fused, threads)
        return self._plans[key]

    def _wiring(self, steps: list[tuple[list[int], Spec]] | None = None) -> list[tuple[int, int | None]]:
        """(input, residual) of every step (default: every layer) as indices of earlier steps' outputs (-1 = network
        input); a fused block adds its residual itself (from its own input)."""
        steps = self.steps() if steps is None else steps
        names = [layer.name for layer in self.layers]
        return memory.wiring([memory.fused_name(names, g) for g, _ in steps],
                             [isinstance(spec, GemmSpec) and spec.residual is not None for _, spec in steps])

    def run_reference(self, x: np.ndarray) -> np.ndarray:
        """Same network through the pure-NumPy reference (bit-exact target for :meth:`run`)."""
        outs: list[np.ndarray] = []
        t = self.quantize_input(x)
        for i, (src, res) in enumerate(self._wiring()):
            r = None if res is None else (t if res < 0 else outs[res])
            outs.append(reference.run(self.layers[i].spec, t if src < 0 else outs[src], r))
        return outs[-1].astype(np.float32) * self.logit_scale[None, :]

    def weight_bytes(self) -> int:
        """Bytes of weights at their storage width (int4 counted as half a byte)."""
        total = 0
        for layer in self.layers:
            specs = [layer.spec.fc1, layer.spec.fc2] if layer.op == "se" else [layer.spec]
            for s in specs:
                w = getattr(s, "weight", None)
                if w is not None:
                    total += w.size * getattr(s, "bits", 8) // 8
        return total


def _in_place_headroom(spec: Spec, shape: tuple[int, ...], threads: int) -> int:
    """`memory.in_place_headroom` of a step running `spec` on input of `shape`."""
    if isinstance(spec, SESpec):
        return memory.in_place_headroom("se", 1, shape[2], shape[3], 1, threads)
    if isinstance(spec, DepthwiseSpec):
        c, k, _ = spec.weight.shape
        return memory.in_place_headroom("dw", spec.stride, shape[2], c, k, threads)
    return memory.NOT_IN_PLACE


__all__ = ["QuantizedLayer", "QuantizedNetwork"]
