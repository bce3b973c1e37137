"""Data-parallel supernet training on Ray Train (`nas.supernet.distributed`), on the real two-node loopback cluster
of `tests/conftest.py` (1 CPU per node, so 2 workers fill it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

import search_spaces as ss
from nas.backend import TrainBackend
from nas.data import DataSpec
from nas.search.prepare import load_splits
from nas.supernet.training import RAY_STORAGE, STATE_FILE, SupernetRecipe, load_supernet, train_supernet

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
# a few-thousand-MAC space (as tests/supernet/test_supernet.py's), so steps take milliseconds on a busy machine
TINY = ss.SearchSpace(
    name="tiny", description="test space", resolutions=(8, 12), stem_channels=8, stem_stride=1, head_channels=32,
    num_classes=10, in_channels=1,
    stages=(ss.StageSpace((1,), (8,), 1, "relu6", (3,), (1.0,), (0.0, 0.25)),
            ss.StageSpace((1, 2), (8, 16), 2, "relu6", (3, 5, 7), (1.0, 3.0, 6.0), (0.0, 0.25)),
            ss.StageSpace((1, 2), (16, 24), 2, "hswish", (3, 5), (3.0, 4.0), (0.0, 0.25))),
)
# 512 training images in batches of 64: 8 steps an epoch; a largest-network epoch, then two of the width phase
# (sandwich rule with in-place distillation, channels sorted first)
RECIPE = SupernetRecipe(epochs=(1, 0, 0, 2), batch_size=64, random_subnets=1, calib_images=64, threads=1)
# Per-epoch mean loss, 2 workers vs 1 with the same global batches and seed. The gradient is the whole batch's
# either way, but each worker normalizes with the batch-norm statistics of its 32 images instead of the batch's 64
# (and the running statistics are averaged), so the runs drift apart a little: measured 0.02%, 0.07% and 0.4% over
# the three epochs here. The bound, 2%, is five times the largest; a wrong gradient (a worker's slice counted twice,
# gradients summed instead of averaged, a learning rate off by the worker count) moves the loss by far more.
LOSS_RTOL = 0.02


def _data():
    return load_splits(DataSpec.of("digits", 0, 512, 128))


def _checkpoints(cache: Path) -> list[Path]:
    return sorted((cache / RAY_STORAGE).glob(f"*/*/{STATE_FILE}"))


def _kill_a_worker_after(root: Path, epoch: int, found: dict, timeout: float = 240.0) -> None:
    """Once Ray Train has registered a reported epoch after `epoch`, SIGKILL one live Ray Train worker process of
    this job (from outside) while the next epoch runs."""
    # the GCS's actor table: the public state API (ray.util.state) needs the dashboard, which the test cluster
    # runs without; only workers of this job (the driver is this process), so other Ray runs on the machine are safe
    from ray._private.state import actors

    job = ray.get_runtime_context().get_job_id()
    deadline = time.time() + timeout
    while time.time() < deadline:
        for ckpt in [p for cache in root.glob("*") for p in _checkpoints(cache)]:
            state = json.loads(ckpt.read_text())
            # registered: an upload Ray Train had not registered yet would be trained again after the restart
            if state["epoch"] > epoch and (ckpt.parents[1] / "checkpoint_manager_snapshot.json").is_file():
                workers = [a for a in actors(actor_state_name="ALIVE").values()
                           if a["ActorClassName"].endswith("RayTrainWorker") and a["JobID"] == job]
                if workers:
                    found["state"] = state
                    os.kill(int(workers[0]["Pid"]), signal.SIGKILL)
                    found["killed"] = int(workers[0]["Pid"])
                    return
        time.sleep(0.1)


def train_two(address: str, root: str) -> None:
    """The driver the test kills: train TINY's supernet on 2 workers of the cluster at `address`."""
    from nas.supernet.distributed import train_supernet_ray

    ray.init(address=address, log_to_driver=False)
    train_supernet_ray(TINY, _data(), RECIPE, seed=0, root=root, pretrained=None, workers=2)


def test_two_workers_follow_one_and_resume_a_killed_driver_and_worker(ray_cluster, tmp_path, capsys):
    """One Ray run whose driver is killed after its first epoch, rerun (it resumes there) and a worker of the rerun
    killed mid-epoch (the worker group restarts from the last epoch): its losses follow the 1-worker run's."""
    from nas.supernet.distributed import train_supernet_ray

    address, _ = ray_cluster
    root = tmp_path / "two"
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_distributed as t; "
              f"t.train_two({address!r}, {str(root)!r})")
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # meanwhile (the driver starts up for seconds), the 1-worker run in this process
        one = train_supernet(TINY, _data(), RECIPE, seed=0, root=tmp_path / "one", pretrained=None, progress=False)
        deadline, ckpts = time.time() + 240, []
        while not ckpts and time.time() < deadline and driver.poll() is None:
            time.sleep(0.1)
            ckpts = [p for cache in root.glob("*") for p in _checkpoints(cache)]
        assert ckpts, "no epoch was reported before the driver ended"
        driver.send_signal(signal.SIGKILL)  # an epoch takes seconds: killed before the second is reported
    finally:
        driver.kill()
        driver.wait()
    recorded = json.loads(ckpts[0].read_text())
    assert recorded["epoch"] == 1

    # the same call again, here: it resumes after the recorded epoch; a worker is killed during its last epoch
    ray.init(address=address, log_to_driver=False)
    try:
        found: dict = {}
        watcher = threading.Thread(target=_kill_a_worker_after, args=(root, recorded["epoch"], found))
        watcher.start()
        capsys.readouterr()
        two = train_supernet_ray(TINY, _data(), RECIPE, seed=0, root=root, pretrained=None, workers=2)
        watcher.join()
    finally:
        ray.shutdown()
    assert "resuming at epoch 2 of 3" in capsys.readouterr().out
    assert "killed" in found, "no worker was killed: the run ended before its second epoch was seen"
    assert two.key == one.key and two.finished and two.epochs_done == 3
    # nothing trained twice: the epoch before the driver died and the one before the worker died, as recorded then
    # (their records hold the wall time, which a second training would change)
    assert two.history[:1] == recorded["history"] and two.history[:2] == found["state"]["history"]
    gaps = [abs(b["loss"] / a["loss"] - 1) for a, b in zip(one.history, two.history, strict=True)]
    assert max(gaps) < LOSS_RTOL, f"relative loss gaps per epoch {gaps}"
    # the final model landed in the normal cache, in its format; Ray Train's storage is gone
    assert not (two.path / RAY_STORAGE).exists()
    state = json.loads((two.path / STATE_FILE).read_text())
    assert state["epoch"] == 3 and state["key"] == two.key
    cached = load_supernet(two.path)
    assert all((a == b).all() for a, b in zip(cached.state_dict().values(), two.supernet.state_dict().values(),
                                               strict=True))
    # a 1-worker run finds the 2-worker cache finished and trains nothing
    again = train_supernet(TINY, _data(), RECIPE, seed=0, root=root, pretrained=None, progress=False)
    assert again.history == two.history


def test_zero_training_workers_is_refused_in_one_line():
    for command in (["train", "supernet"], ["search", "--budget", "1MMACs"]):
        run = subprocess.run([sys.executable, "-m", "nas.cli", *command, "--train-workers", "0"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert "--train-workers" in run.stderr and "positive whole number" in run.stderr
    with pytest.raises(ValueError, match="--train-workers"):
        TrainBackend(workers=0)
    # an address without training workers (nor Ray trials) is refused before any work too
    run = subprocess.run([sys.executable, "-m", "nas.cli", "train", "supernet", "--address", "127.0.0.1:1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--address" in run.stderr and run.stderr.count("\n") == 1, run.stderr


def test_the_backend_records_its_workers():
    assert TrainBackend().to_dict()["workers"] == 1
    assert replace(TrainBackend(), workers=3).to_dict()["workers"] == 3
