"""The AArch64 kernel paths (neon, neondot) are bit-exact, proven without ARM hardware under qemu-user, on a CPU with
the dot product (-cpu max: the HWCAP check must choose neondot) and one without (-cpu cortex-a57: neon):
- every op: tests/kernels/aarch64/driver.cpp, cross-compiled with the production sources, against the portable
  reference;
- whole networks: exported checkpoints run by the C runtime (csrc/examples/run_checkpoint.c on libnas_runtime's
  sources) give the x86 executor's logits bit for bit."""

import ast
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.aarch64

CXX = "aarch64-linux-gnu-g++"
CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"
ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "nas" / "kernels" / "csrc"
DRIVER = Path(__file__).resolve().parent / "aarch64" / "driver.cpp"
RUNTIME = ["capi.cpp", "json.cpp", "sha256.cpp"]  # the C runtime's own sources (beside the kernels')
EXAMPLE = CSRC / "examples" / "run_checkpoint.c"

def _uses_pybind(path: Path) -> bool:
    """Whether the file or a local header it includes (transitively) includes pybind11."""
    text = path.read_text()
    return "<pybind11/" in text or any(_uses_pybind(CSRC / h) for h in re.findall(r'#include "([^"]+)"', text))


def _sources() -> list[Path]:
    """The extension's sources (setup.py's SOURCES) without the Python bindings."""
    names = ast.literal_eval(re.search(r"SOURCES = (\[.*?\])", (ROOT / "setup.py").read_text(), re.S).group(1))
    return [CSRC / n for n in names if not _uses_pybind(CSRC / n)]

# setup.py's flags on an AArch64 host
FLAGS = ["-O3", "-std=c++17", "-Wall", "-Wno-unused-function", "-ffp-contract=off"]


def _missing_tools() -> list[str]:
    return [t for t in (CXX, CC, QEMU) if shutil.which(t) is None]


@pytest.fixture(scope="session")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The op driver and the checkpoint runner, cross-compiled once (static: qemu needs no ARM sysroot)."""
    missing = _missing_tools()
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (apt-get install g++-aarch64-linux-gnu qemu-user; .ci/run does)")
    out = tmp_path_factory.mktemp("aarch64")

    def compile_one(src: Path) -> Path:
        obj = out / (src.stem + ".o")
        cmd = ([CC, "-O2", "-std=c99"] if src.suffix == ".c" else [CXX, *FLAGS])
        subprocess.run([*cmd, f"-I{CSRC}", "-c", str(src), "-o", str(obj)], check=True, capture_output=True,
                       text=True)
        return obj

    kernels = _sources()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            objs = dict(zip([DRIVER, EXAMPLE, *kernels, *(CSRC / n for n in RUNTIME)],
                            pool.map(compile_one, [DRIVER, EXAMPLE, *kernels, *(CSRC / n for n in RUNTIME)]),
                            strict=True))
        lib = [str(objs[k]) for k in kernels]
        exes = {"driver": [objs[DRIVER], *lib], "run_checkpoint": [objs[EXAMPLE], *lib,
                                                                  *(objs[CSRC / n] for n in RUNTIME)]}
        for name, parts in exes.items():
            subprocess.run([CXX, "-static", "-pthread", *map(str, parts), "-o", str(out / name)], check=True,
                           capture_output=True, text=True)
    except subprocess.CalledProcessError as err:
        pytest.fail(f"cross-compiling for aarch64 failed:\n{err.stderr}")
    return {name: out / name for name in exes}


@pytest.mark.parametrize(("cpu", "best"), [("max", "neondot"), ("cortex-a57", "neon")])
def test_arm_paths_match_the_reference_under_qemu(binaries: dict[str, Path], cpu: str, best: str) -> None:
    """cortex-a57 (ARMv8.0) lacks the dot product: only neon runs there, and the feature check must say so."""
    run = subprocess.run([QEMU, "-cpu", cpu, str(binaries["driver"]), best], capture_output=True, text=True,
                         timeout=300)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    isas = "neon neondot" if best == "neondot" else "neon neondot(unsupported)"
    assert f"isas: reference {isas}" in report, report
    assert "mismatches 0" in report and "OK:" in report, report
    for family in ("depthwise", "dw_row_window", "fused_block", "in_place", "fused_stem"):  # those cases ran
        assert re.search(rf"^{family}\s+cases\s+[1-9]\d*\s.*mismatches 0$", report, re.M), report


@pytest.mark.parametrize(("cpu", "isa"), [("max", "neondot"), ("cortex-a57", "neon")])
@pytest.mark.parametrize("name", ["int8", "w4a8"])
def test_whole_networks_on_arm_give_the_x86_logits_bit_for_bit(binaries: dict[str, Path], checkpoints: dict,
                                                               tmp_path: Path, cpu: str, isa: str, name: str) -> None:
    """An exported checkpoint (SE, residual and stride-2 blocks; int8 and W4A8) run by the C runtime on ARM, batch 3
    on 2 threads, against the x86 executor on the same images."""
    import numpy as np

    from nas.export import load
    from nas.kernels.memory import peak_activation_bytes

    x = np.random.default_rng(7).standard_normal((3, 1, 16, 16)).astype(np.float32)
    x.tofile(tmp_path / "x.f32")
    run = subprocess.run([QEMU, "-cpu", cpu, str(binaries["run_checkpoint"]), str(checkpoints[name]),
                          str(tmp_path / "x.f32"), "3", str(tmp_path / "y.f32"), "2"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"on {isa}" in run.stdout, run.stdout  # the CPU's features chose the ISA
    arm = np.fromfile(tmp_path / "y.f32", dtype=np.float32).reshape(3, 10)
    model = load(checkpoints[name])
    assert np.array_equal(arm, model.network.run(x, threads=2))
    # the same fused steps in the same arena as the x86 executor (and as predicted from the architecture)
    arena = model.network.memory_plan((3, 16, 16, 1), threads=2).arena_bytes
    assert arena == peak_activation_bytes(model.arch, 3, threads=2)
    assert f"activation arena {arena} bytes" in run.stdout, run.stdout


@pytest.mark.parametrize(("cpu", "isa"), [("max", "neondot"), ("cortex-a57", "neon")])
@pytest.mark.parametrize(("name", "threads"), [("stem-project", 2), ("stem-project-w4a8", 1), ("stem-se", 2)])
def test_stem_fused_networks_on_arm_give_the_x86_logits_bit_for_bit(binaries: dict[str, Path],
                                                                    stem_checkpoints: dict, tmp_path: Path, cpu: str,
                                                                    isa: str, name: str, threads: int) -> None:
    """Networks whose stem runs inside the first block's step (batch 3: it fuses there on any thread count) on the
    ARM C runtime against the x86 executor, in the same arena."""
    import numpy as np

    from nas.export import load
    from nas.kernels.memory import arch_steps, peak_activation_bytes

    model = load(stem_checkpoints[name])
    r = model.arch.resolution
    assert len(arch_steps(model.arch, 3, threads=threads)[0]) > 1  # the stem is fused here
    x = np.random.default_rng(8).standard_normal((3, 3, r, r)).astype(np.float32)
    x.tofile(tmp_path / "x.f32")
    run = subprocess.run([QEMU, "-cpu", cpu, str(binaries["run_checkpoint"]), str(stem_checkpoints[name]),
                          str(tmp_path / "x.f32"), "3", str(tmp_path / "y.f32"), str(threads)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"on {isa}" in run.stdout, run.stdout
    arm = np.fromfile(tmp_path / "y.f32", dtype=np.float32).reshape(3, 10)
    assert np.array_equal(arm, model.network.run(x, threads=threads))
    arena = model.network.memory_plan((3, r, r, 3), threads=threads).arena_bytes
    assert arena == peak_activation_bytes(model.arch, 3, threads=threads)
    assert f"activation arena {arena} bytes" in run.stdout, run.stdout
