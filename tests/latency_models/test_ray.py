"""`nas profile --address ... --resources device=NAME` on a real two-node Ray cluster on loopback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import search_spaces as ss
from latency_models import DeviceSpec, LatencyTable, enumerate_ops

ROOT = Path(__file__).resolve().parents[2]
ray = pytest.importorskip("ray")


def test_profile_runs_on_the_node_with_the_device(ray_cluster, tmp_path) -> None:
    address, node = ray_cluster
    out = tmp_path / "remote.csv"
    cmd = [sys.executable, "-m", "nas.cli", "profile", "--device", "torch-fp32", "--space", "small32",
           "--resolution", "24", "--budget", "0.05MFLOPs", "--reps", "5", "--chunk", "4", "--max-ops", "8",
           "--out", str(out), "--address", address, "--resources", "device=device_x", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    table = LatencyTable.load(out)
    assert len(table) == 8
    assert table.fingerprint["ray_node_id"] == node  # measured on the device node, not the head
    ops = [o for o in enumerate_ops([ss.get_space("small32")], [24]) if o.macs <= 50_000]
    assert table.keys() == set(ops[:8])
    assert table.fingerprint["device"] == DeviceSpec.make("torch-fp32").name

    # a resource no node holds is a clear error, not a hang
    bad = subprocess.run(cmd[:-3] + ["--resources", "device=nope"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "no live node" in bad.stderr and "nope" in bad.stderr
