"""Build the C runtime (``libnas_runtime``, shared and static, and ``examples/run_checkpoint``) from the package's
``csrc`` with CMake: a C or C++ program then runs an exported checkpoint without Python (``csrc/nas_runtime.h``).

A build directory is reused: CMake recompiles only what changed.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CSRC = Path(__file__).parent / "csrc"


@dataclass(frozen=True)
class RuntimeBuild:
    """The files a build produced."""

    build_dir: Path
    shared: Path  # libnas_runtime.so
    static: Path  # libnas_runtime.a
    example: Path  # run_checkpoint
    header: Path  # nas_runtime.h


def build(out_dir: str | Path, cxx: str | None = None, cc: str | None = None, aarch64: bool = False,
          jobs: int = 2) -> RuntimeBuild:
    """Configure and build in ``out_dir`` with the C++ compiler ``cxx`` and C compiler ``cc`` (default: CMake's
    choice); ``aarch64`` cross-compiles for Linux on AArch64 (with e.g. ``cxx="aarch64-linux-gnu-g++"``)."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise FileNotFoundError("cmake: not found on PATH (needed to build the C runtime)")
    for flag, tool in (("cxx", cxx), ("cc", cc)):
        if tool is not None and shutil.which(tool) is None:
            raise ValueError(f"{flag}: compiler {tool!r} not found on PATH")
    if jobs < 1:
        raise ValueError(f"jobs: expected a positive int, got {jobs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    args = [cmake, "-S", str(CSRC), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release"]
    if cxx is not None:
        args.append(f"-DCMAKE_CXX_COMPILER={cxx}")
    if cc is not None:
        args.append(f"-DCMAKE_C_COMPILER={cc}")
    if aarch64:
        args += ["-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64"]
    for step in (args, [cmake, "--build", str(out), "-j", str(jobs)]):
        run = subprocess.run(step, capture_output=True, text=True)
        if run.returncode != 0:  # the compiler's own messages say what failed
            raise RuntimeError(f"{' '.join(step)} failed:\n{run.stdout[-4000:]}{run.stderr[-4000:]}")
    return RuntimeBuild(build_dir=out, shared=out / "libnas_runtime.so", static=out / "libnas_runtime.a",
                        example=out / "run_checkpoint", header=CSRC / "nas_runtime.h")


__all__ = ["CSRC", "RuntimeBuild", "build"]
