import numpy as np
import pytest

from nas.kernels import _C
from nas.kernels import random_specs as R
from nas.kernels.isa import ISAS, active_isa, available_isas, use_isa
from nas.kernels.ops import compile_op


def test_use_isa_nests_and_restores_on_error() -> None:
    default = active_isa()
    weakest, best = available_isas()[0], available_isas()[-1]
    with use_isa(weakest):
        assert active_isa() == weakest
        with pytest.raises(RuntimeError, match="boom"), use_isa(best):
            assert active_isa() == best
            raise RuntimeError("boom")
        assert active_isa() == weakest  # the enclosing block's choice, not the default
    assert active_isa() == default
    with pytest.raises(ValueError, match="isa"), use_isa("not-an-isa"):
        pass
    assert active_isa() == default


def test_isa_names_are_the_extensions_kernel_tables() -> None:
    """The ISA list is defined once, by the C++ kernel tables (csrc/config.cpp); Python reads it, weakest first."""
    assert isinstance(_C.isas, tuple) and ISAS == _C.isas
    assert len(set(ISAS)) == len(ISAS) and all(isinstance(i, str) and i for i in ISAS)
    assert ISAS[0] == "reference"  # the portable scalar path: every CPU runs it, every other path must match it
    assert available_isas() == [i for i in ISAS if _C.isa_supported(i)]
    assert available_isas()[0] == "reference"


def test_unknown_isa_is_rejected_naming_every_isa_of_the_extension() -> None:
    for make in (lambda: _C.isa_supported("not-an-isa"), lambda: _C.Pool(4, 0, 1 << 30, 0, 0, "not-an-isa"),
                 lambda: compile_op(R.random_pool(np.random.default_rng(0), 4), "not-an-isa")):
        with pytest.raises(ValueError, match="not-an-isa") as err:
            make()
        assert all(name in str(err.value) for name in ISAS)


@pytest.mark.skipif(len(available_isas()) < 2, reason="needs two ISAs this CPU runs")
def test_squeeze_excite_rejects_fc_layers_packed_for_another_isa() -> None:
    """The SE op calls its GEMMs through their own tables, so they must belong to the SE op's ISA."""
    rng = np.random.default_rng(1)
    se = R.random_se(rng, 16, 8, 4)
    a, b = available_isas()[0], available_isas()[-1]
    fc = compile_op(se.fc1, a)._op, compile_op(se.fc2, b)._op
    pool = _C.Pool(4, int(se.pool.in_zp), int(se.pool.multiplier), int(se.pool.shift), int(se.pool.out_zp), b)
    with pytest.raises(ValueError, match="same isa"):
        _C.SqueezeExcite(pool, *fc, int(se.in_zp), int(se.multiplier), int(se.shift), int(se.out_zp), b)
    ok = compile_op(se, b).run(rng.integers(0, 256, size=(2, 2, 2, 16), dtype=np.uint8))
    assert ok.shape == (2, 2, 2, 16)


def test_benchmark_only_code_is_not_in_the_product_module() -> None:
    assert not hasattr(_C, "vnni_peak")
