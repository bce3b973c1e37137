"""Bad arguments raise clear Python exceptions naming the argument, never crash."""

import numpy as np
import pytest

from nas.kernels import random_specs as R
from nas.kernels.isa import available_isas, check_isa, use_isa
from nas.kernels.ops import DepthwiseSpec, GemmSpec, Requant, compile_op

rng = np.random.default_rng(0)


def test_wrong_dtype_shape_layout():
    op = compile_op(R.random_gemm(rng, 16, 8))
    x = rng.integers(0, 256, size=(1, 4, 4, 8), dtype=np.uint8)
    with pytest.raises(TypeError, match="x: expected dtype uint8"):
        op.run(x.astype(np.float32))
    with pytest.raises(ValueError, match="last dim must be K=8"):
        op.run(x[..., :7].copy())
    with pytest.raises(ValueError, match="C-contiguous"):
        op.run(np.asfortranarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)[:, :, :, :])
    with pytest.raises(TypeError, match="numpy array"):
        op.run([[1, 2, 3]])
    with pytest.raises(ValueError, match="threads"):
        op.run(x, threads=0)
    dw = compile_op(R.random_depthwise(rng, 8))
    with pytest.raises(ValueError, match="NHWC"):
        dw.run(x[0])
    with pytest.raises(ValueError, match="dim 3 must be 8"):
        dw.run(np.zeros((1, 4, 4, 9), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        dw.run(np.zeros((1, 4, 16, 8), np.uint8)[:, :, ::2])
    with pytest.raises(ValueError, match="out: expected shape"):
        op.run(x, out=np.zeros((1, 4, 4, 15), np.uint8))


def test_bad_specs():
    good = R.random_gemm(rng, 16, 8)
    rq = good.requant
    with pytest.raises(ValueError, match="multiplier"):
        compile_op(GemmSpec(good.weight, good.bias, 0, Requant(rq.multiplier[:3], rq.shift, 0)))
    with pytest.raises(TypeError, match="weight: expected dtype int8"):
        compile_op(GemmSpec(good.weight.astype(np.int32), good.bias, 0, rq))
    with pytest.raises(ValueError, match="bits"):
        compile_op(GemmSpec(good.weight, good.bias, 0, rq, bits=3))
    with pytest.raises(ValueError, match=r"weight: values must lie in \[-7, 7\]"):
        compile_op(GemmSpec(good.weight, good.bias, 0, rq, bits=4))
    with pytest.raises(ValueError, match="in_zp"):
        compile_op(GemmSpec(good.weight, good.bias, 300, rq))
    with pytest.raises(ValueError, match="shift"):
        compile_op(GemmSpec(good.weight, good.bias, 0, Requant(rq.multiplier, rq.shift + 40, 0)))
    with pytest.raises(ValueError, match="act_max"):
        compile_op(GemmSpec(good.weight, good.bias, 0, Requant(rq.multiplier, rq.shift, 0, 200, 100)))
    with pytest.raises(ValueError, match="lut"):
        compile_op(GemmSpec(good.weight, good.bias, 0, Requant(rq.multiplier, rq.shift, 0, lut=np.zeros(10, np.uint8))))
    d = R.random_depthwise(rng, 8)
    with pytest.raises(ValueError, match="k in"):
        compile_op(DepthwiseSpec(np.zeros((8, 4, 4), np.int8), 1, d.bias, 0, d.requant))
    with pytest.raises(ValueError, match="stride"):
        compile_op(DepthwiseSpec(d.weight, 3, d.bias, 0, d.requant))
    with pytest.raises(TypeError, match="spec"):
        compile_op("not a spec")


def test_residual_required_and_rejected():
    spec = R.random_gemm(rng, 16, 8, residual=True)
    x = rng.integers(0, 256, size=(1, 2, 2, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="residual"):
        compile_op(spec).run(x)
    with pytest.raises(ValueError, match="residual"):
        compile_op(R.random_gemm(rng, 16, 8)).run(x, residual=np.zeros((1, 2, 2, 16), np.uint8))


def test_isa_selection(monkeypatch):
    with pytest.raises(ValueError, match="isa"):
        check_isa("not-an-isa")
    for isa in available_isas():
        with use_isa(isa):
            assert compile_op(R.random_gemm(rng, 4, 4)).isa == isa
    monkeypatch.setenv("NAS_KERNELS_ISA", "reference")
    from nas.kernels import active_isa

    assert active_isa() == "reference"
    monkeypatch.setenv("NAS_KERNELS_ISA", "sse9")
    with pytest.raises(ValueError, match=r"^NAS_KERNELS_ISA=sse9: expected one of"):  # names the variable set
        active_isa()
