"""`nas space ...` through the real CLI entry point."""

import json

import pytest

from nas.cli import main


def test_space_list(capsys):
    assert main(["space", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("mobilenetv2", "mobilenetv3", "efficientnet", "small32", "small32-v3", "efficientnet-b0"):
        assert name in out


@pytest.mark.parametrize("space", ["small32", "small32-v3"])
def test_space_sample_json(capsys, space):
    assert main(["space", "sample", "--space", space, "--budget", "50MFLOPs", "-n", "4", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4 and all(r["macs"] <= 50e6 for r in rows)


def test_space_cost_table(capsys):
    assert main(["space", "cost", "mobilenetv2"]) == 0
    out = capsys.readouterr().out
    assert "blocks.16.project" in out and "300,774,272" in out and "3,504,872" in out
    # the peak is the default arena (fused blocks, in-place depthwise), memory.peak_activation_bytes; layer by layer
    # it is larger
    assert "memory on the kernels: 371,648 bytes per image" in out and "1,505,280 layer by layer" in out


def test_bad_input_exits_2_with_clear_message(capsys):
    with pytest.raises(SystemExit, match="2"):  # refused by the flag's own check while parsing
        main(["space", "sample", "--budget", "100Mbogus"])
    assert "argument --budget: cannot parse '100Mbogus'" in capsys.readouterr().err
    assert main(["space", "cost", "r32_i1_n10:stem_c8_s1_re:ir_k4_e6_c16_re:head_c32_re"]) == 2
    assert "kernel" in capsys.readouterr().err
    assert main(["space", "sample", "--budget", "1MFLOPs"]) == 2
    assert "smallest architecture costs" in capsys.readouterr().err
