"""Build the C++ kernel extension ``nas.kernels._C`` (pybind11, no PyTorch headers, no JIT).

Baseline flags stay portable (-O3, no -march=native); the AVX2 and AVX512-VNNI kernels (x86-64) and the NEON
dot-product kernels (AArch64) are compiled via per-file ``#pragma GCC target`` and selected at run time. Every
source file is built on every architecture; the ISA files of other architectures compile to nothing.
"""

import hashlib
import sys
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

if sys.platform == "win32":
    FLAGS = ["/O2", "/std:c++17"]
else:
    # GCC contracts a * b + c into one fused multiply-add (one rounding) wherever the target has FMA: the AVX2 and
    # AVX-512 files and AArch64. The float32 epilogue must stay two roundings, as the reference computes it (the
    # explicit FMA intrinsics of the training kernels are not affected).
    FLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden", "-Wall", "-Wno-unused-function", "-ffp-contract=off"]

# bindings, input validation, weight packing, the per-ISA kernel tables, then the kernels (one file per ISA)
SOURCES = ["module.cpp", "validate.cpp", "ops.cpp", "pack.cpp", "config.cpp", "threadpool.cpp",
           "ref.cpp", "avx2.cpp", "avx512.cpp", "neon.cpp", "neon_dot.cpp"]

# A hash of what is compiled (the sources and every header), built into the extension: latency tables record
# the build they were measured on (`nas.kernels.build_hash`), whatever the source tree holds since.
CSRC = Path("nas/kernels/csrc")
_hash = hashlib.sha256()
for f in sorted([*(CSRC / s for s in SOURCES), *CSRC.glob("*.h")]):
    _hash.update(f.name.encode() + f.read_bytes())

ext = Pybind11Extension(
    "nas.kernels._C",
    [str(CSRC / s) for s in SOURCES],
    extra_compile_args=FLAGS,
    define_macros=[("NASK_BUILD_FLAGS", '"' + " ".join(FLAGS) + '"'),
                   ("NASK_SOURCE_HASH", '"' + _hash.hexdigest() + '"')],
    cxx_std=17,
)

setup(ext_modules=[ext])
