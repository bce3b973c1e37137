"""Quantized op specifications (plain dataclasses of NumPy arrays + ints) and their compiled kernels.

A spec holds everything the integer arithmetic needs; :func:`compile_op` packs it once for an ISA and returns an
object whose ``run`` executes the C++ kernel. ``nas.kernels.reference.run`` executes the same spec in NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nas.kernels import _C
from nas.kernels.isa import resolve_isa


@dataclass
class Requant:
    """Per-output-channel requantization: ``y = clamp(out_zp + rne(float32(acc + bias) * scale[c]), lo, hi)``
    with ``scale[c] = float32(M[c] * 2^(shift[c] - 31))`` (IEEE float32, round half to even), then ``lut[y]``
    when a table is given."""

    multiplier: np.ndarray  # int32 [C]
    shift: np.ndarray  # int32 [C], > 0 = left shift
    out_zp: int
    act_min: int = 0
    act_max: int = 255
    lut: np.ndarray | None = None  # uint8 [256]


@dataclass
class Residual:
    """Fused residual add: ``v = float32(acc) * scale[c] + float32(r - zp) * scale_r`` (float32),
    ``y = clamp(out_zp + rne(v))``. Both multipliers carry an extra 2^RESIDUAL_BITS, which the kernels divide out
    of the float32 scales exactly (``scale = float32(M * 2^(shift - RESIDUAL_BITS - 31))``)."""

    zp: int
    multiplier: int
    shift: int


@dataclass
class GemmSpec:
    """1x1 convolution (NHWC) or linear layer: ``acc[m, n] = sum_k (x[m, k] - in_zp) * w[n, k]``."""

    weight: np.ndarray  # int8 [N, K] (int4 values in [-7, 7] when bits == 4)
    bias: np.ndarray  # int32 [N]
    in_zp: int
    requant: Requant
    bits: int = 8
    sub_scales: np.ndarray | None = None  # int32 [N, G] integer group sub-scales (bits == 4 only)
    group_size: int = 0
    out_int32: bool = False  # write acc + bias as int32 (classifier logits), skip requantization
    residual: Residual | None = None


@dataclass
class ConvSpec:
    """Full kxk convolution, padding k//2 (the stem)."""

    weight: np.ndarray  # int8 [Cout, k, k, Cin]
    stride: int
    bias: np.ndarray  # int32 [Cout]
    in_zp: int
    requant: Requant


@dataclass
class DepthwiseSpec:
    """Depthwise kxk convolution, padding k//2."""

    weight: np.ndarray  # int8 [C, k, k]
    stride: int
    bias: np.ndarray  # int32 [C]
    in_zp: int
    requant: Requant


@dataclass
class PoolSpec:
    """Global average pool over ``hw`` positions: ``y = clamp(out_zp + rne(float32(sum(x) - hw * in_zp) * scale))``."""

    hw: int
    in_zp: int
    multiplier: int
    shift: int
    out_zp: int


@dataclass
class SESpec:
    """Squeeze-excite: pool -> fc1 (ReLU) -> fc2 (hard-sigmoid LUT, gate grid 1/255) ->
    ``y = clamp(out_zp + rne(float32((x - in_zp) * gate) * scale))``."""

    pool: PoolSpec
    fc1: GemmSpec
    fc2: GemmSpec
    in_zp: int
    multiplier: int
    shift: int
    out_zp: int


@dataclass
class FusedBlockSpec:
    """A block's layers run as one op in bands of rows (csrc/ops.h FusedBlock): a head (``expand``, none for expand
    ratio 1, or the network's ``stem`` convolution) -> ``dw`` -> ``project`` (whose residual, if any, adds the block
    input; none only with a stem: the step then writes the depthwise output, for a first block with squeeze-excite).
    Bit-exact with its parts run layer by layer; the head's and the depthwise's tensors are never materialized."""

    expand: GemmSpec | None
    dw: DepthwiseSpec
    project: GemmSpec | None
    band_rows: int = 0  # output rows per band; 0: sized to stay in cache (ops.h FusedBlock); any value, same bits
    stem: ConvSpec | None = None  # the head instead of expand: the stem fused into the first block (issue #33)

    def parts(self) -> list[Spec]:
        """The layers it runs, in order."""
        return [s for s in (self.stem, self.expand, self.dw, self.project) if s is not None]


Spec = GemmSpec | ConvSpec | DepthwiseSpec | PoolSpec | SESpec | FusedBlockSpec


def _i32(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int32)


def _int8(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.int8:
        raise TypeError(f"{name}: expected dtype int8, got {a.dtype}")
    return np.ascontiguousarray(a)


def _rq_args(rq: Requant) -> tuple:
    lut = None if rq.lut is None else np.ascontiguousarray(rq.lut, dtype=np.uint8)
    return (
        _i32(rq.multiplier, "multiplier"),
        _i32(rq.shift, "shift"),
        int(rq.out_zp),
        int(rq.act_min),
        int(rq.act_max),
        lut,
    )


def conv_out_size(size: int, kernel: int, stride: int) -> int:
    """Output height (or width) of a `kernel` x `kernel` convolution or depthwise of `stride` with padding
    `kernel` // 2 on `size` input rows (columns)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def out_shape(spec: Spec, x_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Output shape of ``spec`` applied to an input of shape ``x_shape``."""
    if isinstance(spec, GemmSpec):
        return (*x_shape[:-1], spec.weight.shape[0])
    if isinstance(spec, ConvSpec | DepthwiseSpec):
        n, h, w, _ = x_shape
        k, s = spec.weight.shape[1], spec.stride
        c = spec.weight.shape[0]
        return (n, conv_out_size(h, k, s), conv_out_size(w, k, s), c)
    if isinstance(spec, PoolSpec):
        return (x_shape[0], x_shape[-1])
    if isinstance(spec, SESpec):
        return tuple(x_shape)
    if isinstance(spec, FusedBlockSpec):
        for part in spec.parts():
            x_shape = out_shape(part, x_shape)
        return x_shape
    raise TypeError(f"spec: unknown op spec {type(spec).__name__}")


@dataclass
class CompiledOp:
    """A spec packed for one ISA. ``run(x, residual=None, out=None, threads=1)``; releases the GIL."""

    spec: Spec
    isa: str
    _op: object = field(repr=False)

    def run(
        self, x: np.ndarray, residual: np.ndarray | None = None, out: np.ndarray | None = None, threads: int = 1
    ) -> np.ndarray:
        """Run the kernel on uint8 NHWC (or [M, K] for GEMMs) input ``x``; returns ``out``."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x: expected a numpy array, got {type(x).__name__}")
        if not isinstance(threads, int | np.integer) or threads < 1:
            raise ValueError(f"threads: expected a positive int, got {threads!r}")
        spec = self.spec
        if isinstance(spec, GemmSpec):
            if x.ndim < 2:
                raise ValueError(f"x: expected a [..., K] array with at least 2 dims, got shape {x.shape}")
            dtype = np.int32 if spec.out_int32 else np.uint8
            shape = out_shape(spec, x.shape)
            if out is None:
                out = np.empty(shape, dtype=dtype)
            if out.shape != shape:
                raise ValueError(f"out: expected shape {shape}, got {out.shape}")
            if not x.flags.c_contiguous:
                raise ValueError("x: array must be C-contiguous (use np.ascontiguousarray)")
            k = spec.weight.shape[1]
            if x.shape[-1] != k:
                raise ValueError(f"x: last dim must be K={k}, got shape {x.shape}")
            x2 = x.reshape(-1, k)
            r2 = None
            if residual is not None:
                if not isinstance(residual, np.ndarray) or residual.shape != shape:
                    raise ValueError(f"residual: expected a uint8 array of shape {shape}")
                r2 = residual.reshape(-1, shape[-1])
            self._op.run(x2, out.reshape(-1, shape[-1]), r2, int(threads))
            return out
        if residual is not None:
            raise ValueError("residual: only pointwise/linear ops take a residual (a fused block adds its input)")
        if x.ndim != 4:
            raise ValueError(f"x: expected an NHWC uint8 array (4-d), got shape {x.shape}")
        shape = out_shape(spec, x.shape)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        self._op.run(x, out, int(threads))
        return out


def _gemm(spec: GemmSpec, isa: str) -> object:
    w = _int8(spec.weight, "weight")
    res = None
    if spec.residual is not None:
        r = spec.residual
        res = (int(r.zp), int(r.multiplier), int(r.shift))
    subs = None if spec.sub_scales is None else _i32(spec.sub_scales, "sub_scales")
    return _C.Gemm(
        w, _i32(spec.bias, "bias"), int(spec.in_zp), *_rq_args(spec.requant), int(spec.bits), subs,
        int(spec.group_size), isa, bool(spec.out_int32), res,
    )


def _depthwise(spec: DepthwiseSpec, isa: str) -> object:
    return _C.Depthwise(_int8(spec.weight, "weight"), int(spec.stride), _i32(spec.bias, "bias"), int(spec.in_zp),
                        *_rq_args(spec.requant), isa)


def fused_scratch_bytes(spec: FusedBlockSpec, h: int, w: int) -> int:
    """Scratch bytes one thread of the fused step needs on h x w input (its band buffers)."""
    c, k, _ = spec.dw.weight.shape
    if spec.stem is not None:
        cout, sk, _, cin = spec.stem.weight.shape
        return int(_C.fused_stem_scratch_bytes(int(h), int(w), int(cin), int(sk), int(spec.stem.stride), int(c),
                                               int(k), int(spec.dw.stride), spec.project is not None,
                                               int(spec.band_rows)))
    return int(_C.fused_scratch_bytes(int(h), int(w), int(c), int(k), int(spec.dw.stride), spec.expand is not None,
                                      int(spec.band_rows)))


def fuse(spec: FusedBlockSpec, parts: Sequence[CompiledOp]) -> CompiledOp:
    """The fused step of ``spec`` over its parts already packed (``compile_op`` of each of ``spec.parts()``, in that
    order, one ISA): the fused op shares their packed weights instead of packing them again."""
    roles = [r for r in ("stem", "expand", "dw", "project") if getattr(spec, r) is not None]
    if len(parts) != len(roles):
        raise ValueError(f"parts: expected {len(roles)} compiled ops ({', '.join(roles)}), got {len(parts)}")
    op = dict(zip(roles, (p._op for p in parts), strict=True))
    return CompiledOp(spec=spec, isa=parts[0].isa, _op=_C.FusedBlock(op.get("expand"), op["dw"], op.get("project"),
                                                                     int(spec.band_rows), op.get("stem")))


def compile_op(spec: Spec, isa: str | None = None) -> CompiledOp:
    """Validate and pack ``spec`` for ``isa`` (default: the active ISA)."""
    isa = resolve_isa(isa)
    if isinstance(spec, GemmSpec):
        op = _gemm(spec, isa)
    elif isinstance(spec, ConvSpec):
        op = _C.Conv(_int8(spec.weight, "weight"), int(spec.stride), _i32(spec.bias, "bias"), int(spec.in_zp),
                     *_rq_args(spec.requant), isa)
    elif isinstance(spec, DepthwiseSpec):
        op = _depthwise(spec, isa)
    elif isinstance(spec, PoolSpec):
        op = _C.Pool(int(spec.hw), int(spec.in_zp), int(spec.multiplier), int(spec.shift), int(spec.out_zp), isa)
    elif isinstance(spec, FusedBlockSpec):
        return fuse(spec, [compile_op(part, isa) for part in spec.parts()])
    elif isinstance(spec, SESpec):
        p = spec.pool
        pool = _C.Pool(int(p.hw), int(p.in_zp), int(p.multiplier), int(p.shift), int(p.out_zp), isa)
        op = _C.SqueezeExcite(pool, _gemm(spec.fc1, isa), _gemm(spec.fc2, isa), int(spec.in_zp),
                              int(spec.multiplier), int(spec.shift), int(spec.out_zp), isa)
    else:
        raise TypeError(f"spec: expected an op spec dataclass, got {type(spec).__name__}")
    return CompiledOp(spec=spec, isa=isa, _op=op)
