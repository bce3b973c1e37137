import pytest

from nas.kernels.isa import active_isa, available_isas, use_isa


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
    with pytest.raises(ValueError, match="isa"), use_isa("neon"):
        pass
    assert active_isa() == default
