"""Fixtures shared by the kernel tests."""

from pathlib import Path

import pytest

import search_spaces as ss

# SE blocks, residual blocks, a stride-2 block, a hidden layer: every op and wiring of the executor.
ARCH = ss.decode("r16_i1_n10:stem_c16_s1_hs:ds_k3_c16_re6:ir_k3_e3_c24_se0.25_hs,ir_k5_e6_c24_re6:"
                 "ir_k3_s2_e4_c32_se0.25_sw:head_c64_re6:fc_c32_hs")


# The stem fused into the first block (issue #33): with its project (a block without squeeze-excite) and without
# (its SE follows); each fuses at some batch sizes and thread counts and not at others.
STEM_ARCHS = {
    "stem-project": ss.decode("r96_i3_n10:stem_c16_s2_re6:ds_k3_c8_re6:ir_k3_s2_e3_c16_re6:head_c32_re6"),
    "stem-se": ss.decode("r64_i3_n10:stem_c16_s2_hs:ds_k3_s2_c16_se0.25_re:ir_k3_e3_c16_hs:head_c32_hs"),
}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """`ARCH` exported as an int8 and a W4A8 (groups of 8) checkpoint, with non-trivial batch-norm statistics."""
    return _export(tmp_path_factory, ARCH, [("int8", {}), ("w4a8", {"weight_bits": 4, "group_size": 8})])


@pytest.fixture(scope="session")
def stem_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """`STEM_ARCHS` exported as int8 checkpoints (W4A8 for the one with project, `-w4a8`)."""
    out = {}
    for name, arch in STEM_ARCHS.items():
        cfgs = [(name, {})] + ([(name + "-w4a8", {"weight_bits": 4, "group_size": 8})] if "project" in name else [])
        out.update(_export(tmp_path_factory, arch, cfgs))
    return out


def _export(tmp_path_factory, arch: ss.Arch, configs: list[tuple[str, dict]]) -> dict[str, Path]:
    import torch
    from torch import nn

    from nas.compress.quantize import QuantConfig, quantize_model
    from nas.export import save

    torch.manual_seed(0)
    m = ss.build(arch).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 2)
            mod.bias.data.uniform_(-0.5, 0.5)
    r, c = arch.resolution, arch.in_channels
    calib = torch.randn(64, c, r, r, generator=torch.Generator().manual_seed(1))
    root = tmp_path_factory.mktemp("ck")
    return {name: Path(save(quantize_model(m, QuantConfig(**cfg), calib=calib)[0], root / name))
            for name, cfg in configs}
