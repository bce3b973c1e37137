"""The runtime without the `search` extra: loading, running, evaluating (IDX / npz) and benchmarking an exported
checkpoint, `nas profile --device kernels` and `nas --help` import neither torch nor optuna nor ray.

Each path runs for real in a fresh interpreter with an import hook that records every attempt to import one of
them (and lets it through, so code that would catch a failed import behaves as it does without the hook); the
test asserts no attempt was made and none of them is in `sys.modules` at the end.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import search_spaces as ss
from nas.data import TensorSplits, load_dataset, normalise, split

ROOT = Path(__file__).resolve().parents[1]
ARCH = ss.decode("r16_i1_n10:stem_c16_s1_re6:ds_k3_c16_re6:ir_k3_e3_c24_se0.25_re6:head_c64_re6")
HEAVY = ("torch", "optuna", "ray")

# Runs the statements given as argv[1] with argv[2:] as their arguments, then prints the attempted and loaded
# heavy modules as the last line of stdout (JSON).
_HARNESS = f"""
import json, sys
HEAVY = {HEAVY!r}
tried = []

class Recorder:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HEAVY:
            tried.append(name)
        return None

sys.meta_path.insert(0, Recorder())
code, sys.argv = sys.argv[1], sys.argv[2:]
status = 0
try:
    exec(code)
except SystemExit as exc:
    status = exc.code or 0
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in HEAVY)
print(json.dumps({{"tried": sorted(set(tried)), "loaded": loaded, "status": status}}))
"""
_CLI = "from nas.cli import main; sys.exit(main(sys.argv))"


def lean(code: str, *args: str) -> tuple[str, dict]:
    """Run `code` in a fresh interpreter; its output (without the last line) and the harness's report."""
    out = subprocess.run([sys.executable, "-c", _HARNESS, code, *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    *lines, last = out.stdout.strip().splitlines()
    report = json.loads(last)
    assert report["status"] == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert report["tried"] == [] and report["loaded"] == [], report
    return "\n".join(lines), report


def _write_idx(path: Path, arr: np.ndarray) -> None:
    code = 0x08 if arr.dtype == np.uint8 else 0x0D
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.tobytes())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A quantized ARCH checkpoint, and the same 10-class 8x8 images as an npz file and an MNIST-style IDX folder
    (resized to the network's 16x16 when evaluated)."""
    from nas.compress.quantize import QuantConfig, quantize_model
    from nas.export import save

    root = tmp_path_factory.mktemp("lean")
    torch.manual_seed(0)
    q, _ = quantize_model(ss.build(ARCH).eval(), QuantConfig(calibration="minmax"), calib=torch.randn(32, 1, 16, 16))
    ck = save(q, root / "ck", dataset="digits@split0")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 17, (300, 8, 8), dtype=np.uint8)
    y = (np.arange(300) % 10).astype(np.uint8)
    np.savez(root / "d.npz", x=x[:, None], y=y.astype(np.int64))
    (root / "idx").mkdir()
    _write_idx(root / "idx" / "train-images-idx3-ubyte", x[:250])
    _write_idx(root / "idx" / "train-labels-idx1-ubyte", y[:250])
    _write_idx(root / "idx" / "t10k-images-idx3-ubyte", x[250:])
    _write_idx(root / "idx" / "t10k-labels-idx1-ubyte", y[250:])
    return {"ck": ck, "npz": str(root / "d.npz"), "idx": str(root / "idx"), "root": root, "q": q}


def test_python_api_loads_runs_evaluates_and_benchmarks_without_torch(exported):
    code = ("import numpy as np\n"
            "from nas.data import load_dataset, split\n"
            "from nas.export import load\n"
            "m = load(sys.argv[0])\n"
            "logits = m(np.zeros((3, 1, 16, 16), np.float32))\n"
            "ev = m.evaluate(split(load_dataset(sys.argv[1]), seed=0), 'test')\n"
            "b = m.bench(reps=3, warmup=1)\n"
            "print(json.dumps({'shape': list(logits.shape), 'top1': ev.top1, 'n': ev.n, 'ms': b['median_ms']}))")
    out, _ = lean(code, exported["ck"], exported["npz"])
    res = json.loads(out)
    assert res["shape"] == [3, 10] and res["ms"] > 0
    # the NumPy batches score exactly as the torch tensors of the same splits do
    splits = split(load_dataset(exported["npz"]), seed=0)
    want = exported["q"].evaluate(TensorSplits(splits), "test")
    assert (res["top1"], res["n"]) == (want.top1, want.n)


@pytest.mark.parametrize("data", ["npz", "idx"])
def test_cli_eval_without_torch(exported, data):
    out, _ = lean(_CLI, "eval", exported["ck"], "--data", exported[data], "--json")
    res = json.loads(out)
    assert res["n"] == (30 if data == "npz" else 50) and 0 <= res["top1"] <= 1


def test_cli_bench_and_help_without_torch(exported):
    out, _ = lean(_CLI, "bench", exported["ck"], "--reps", "3", "--json")
    assert json.loads(out)["kernels"]["median_ms"] > 0
    out, _ = lean(_CLI, "--help")
    assert "search" in out and "profile" in out


def test_cli_profile_kernels_without_torch(exported):
    table = exported["root"] / "kernels.csv"
    out, _ = lean(_CLI, "profile", "--device", "kernels", "--space", "small32", "--out", str(table), "--max-ops",
                  "4", "--passes", "1", "--reps", "3", "--no-progress")
    assert "4 ops in" in out and table.is_file()


@pytest.mark.parametrize("native,size", [((8, 8), (16, 16)), ((16, 12), (8, 8)), ((8, 8), (8, 8)), ((9, 7), (4, 11))])
def test_numpy_normalise_matches_torch_interpolate(native, size):
    """The one transform (NumPy) equals PyTorch's bilinear resize, antialiased when shrinking, to float rounding."""
    images = np.random.default_rng(1).integers(0, 256, (5, 3, *native), dtype=np.uint8)
    mean, std = np.array([100.0, 120.0, 90.0]), np.array([50.0, 60.0, 70.0])
    got = normalise(images, mean, std, size)
    x = (torch.from_numpy(images).float() - torch.tensor(mean).float().view(1, 3, 1, 1)) / torch.tensor(
        std).float().view(1, 3, 1, 1)
    if size != native:
        shrink = size[0] < native[0] or size[1] < native[1]
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    assert got.dtype == np.float32 and got.shape == (5, 3, *size)
    np.testing.assert_allclose(got, x.numpy(), rtol=0, atol=1e-5)


# a core install: `import torch` fails as it does where the package is missing
_NO_TORCH = "import sys\nsys.modules['torch'] = None\nfrom nas.cli import main\nsys.exit(main(sys.argv[1:]))"


def test_search_without_the_extra_says_how_to_install(tmp_path):
    """Where torch is missing, a command that needs it exits 2 with one line naming the extra; help still works."""
    out = subprocess.run([sys.executable, "-c", _NO_TORCH, "search", "--budget", "15MFLOPs", "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        'nas search: error: this needs torch, which is not installed (search, training and PyTorch devices are an '
        'extra): pip install "nas[search]"']
    out = subprocess.run([sys.executable, "-c", _NO_TORCH, "train", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "usage: nas train" in out.stdout, out.stderr[-2000:]
