"""Build the C++ kernel extension ``nas.kernels._C`` (pybind11, no PyTorch headers, no JIT).

Baseline flags stay portable (-O3, no -march=native); the AVX2 and AVX512-VNNI kernels (x86-64) and the NEON
dot-product kernels (AArch64) are compiled via per-file ``#pragma GCC target`` and selected at run time. Every
source file is built on every architecture; the ISA files of other architectures compile to nothing.
"""

import platform
import sys

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

if sys.platform == "win32":
    FLAGS = ["/O2", "/std:c++17"]
else:
    FLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
if platform.machine().lower() in ("aarch64", "arm64") and sys.platform != "win32":
    # GCC contracts a * b + c into fmla on AArch64 by default; the float32 epilogue must stay two roundings
    FLAGS.append("-ffp-contract=off")

# bindings, input validation, weight packing, the per-ISA kernel tables, then the kernels (one file per ISA)
SOURCES = ["module.cpp", "validate.cpp", "ops.cpp", "pack.cpp", "config.cpp", "threadpool.cpp",
           "ref.cpp", "avx2.cpp", "avx512.cpp", "neon.cpp", "neon_dot.cpp"]

ext = Pybind11Extension(
    "nas.kernels._C",
    [f"nas/kernels/csrc/{s}" for s in SOURCES],
    extra_compile_args=FLAGS,
    define_macros=[("NASK_BUILD_FLAGS", '"' + " ".join(FLAGS) + '"')],
    cxx_std=17,
)

setup(ext_modules=[ext])
