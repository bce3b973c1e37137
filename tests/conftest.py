"""Test-wide settings, and a real two-node Ray cluster on loopback shared by the Ray tests."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Passive OpenMP waiting for the tests, set before torch is imported by any test module: the suite starts Ray
# workers and CLI subprocesses beside the pytest process, and spinning threads would slow them all.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Test clusters run on loopback only; without this, a token written by an earlier embedded `ray.init`
# (~/.ray/auth_token) makes a later `ray start` head and worker disagree about authentication.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (restored after it): on a busy shared 2-core machine, two spinning
    OpenMP threads per process run several times slower. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict) -> subprocess.Popen:
    # --block keeps `ray start` in the foreground; its own process group lets teardown kill exactly this node
    return subprocess.Popen([shutil.which("ray") or "ray", "start", "--block", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture(scope="session")
def ray_cluster():
    """A head node (no device) and a worker node holding custom resource `device_x`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "RAY_USAGE_STATS_ENABLED": "0"}
    tmp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    procs = []
    try:
        procs.append(_start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
                             "--include-dashboard", "false", "--temp-dir", tmp,
                             "--dashboard-agent-listen-port", str(_free_port()),
                             "--min-worker-port", "20000", "--max-worker-port", "20999"], env))
        time.sleep(3)
        procs.append(_start(["--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                             "--resources", json.dumps({"device_x": 1}),
                             "--dashboard-agent-listen-port", str(_free_port()),
                             "--min-worker-port", "21000", "--max-worker-port", "21999"], env))
        deadline = time.time() + 60
        node = None
        while node is None and time.time() < deadline:
            time.sleep(1)
            dead = [p.args for p in procs if p.poll() is not None]
            assert not dead, f"ray start exited: {dead}"
            try:
                import ray

                ray.init(address=address, log_to_driver=False)
                node = next((n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("device_x")),
                            None)
            except Exception:  # noqa: BLE001 - the head may still be starting
                pass
            finally:
                ray.shutdown()
        assert node is not None, "the Ray worker node with device_x never joined"
        yield address, node
    finally:
        for p in procs:  # graceful: each `ray start --block` stops its own raylet/GCS on SIGTERM
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 3  # a test cluster keeps nothing: a node slower to stop is killed
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)
