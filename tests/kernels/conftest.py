"""Fixtures shared by the kernel tests."""

from pathlib import Path

import pytest

import search_spaces as ss

# SE blocks, residual blocks, a stride-2 block, a hidden layer: every op and wiring of the executor.
ARCH = ss.decode("r16_i1_n10:stem_c16_s1_hs:ds_k3_c16_re6:ir_k3_e3_c24_se0.25_hs,ir_k5_e6_c24_re6:"
                 "ir_k3_s2_e4_c32_se0.25_sw:head_c64_re6:fc_c32_hs")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """`ARCH` exported as an int8 and a W4A8 (groups of 8) checkpoint, with non-trivial batch-norm statistics."""
    import torch
    from torch import nn

    from nas.compress.quantize import QuantConfig, quantize_model
    from nas.export import save

    torch.manual_seed(0)
    m = ss.build(ARCH).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 2)
            mod.bias.data.uniform_(-0.5, 0.5)
    calib = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    root = tmp_path_factory.mktemp("ck")
    return {name: Path(save(quantize_model(m, cfg, calib=calib)[0], root / name)) for name, cfg in
            [("int8", QuantConfig()), ("w4a8", QuantConfig(weight_bits=4, group_size=8))]}
