"""Build the C++ kernel extension ``nas.kernels._C`` (pybind11, no PyTorch headers, no JIT).

Baseline flags stay portable (-O3, no -march=native); the AVX2 and AVX512-VNNI kernels are compiled via
per-file ``#pragma GCC target`` and selected at run time.
"""

import sys

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

if sys.platform == "win32":
    FLAGS = ["/O2", "/std:c++17"]
else:
    FLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]

# bindings, input validation, weight packing, the per-ISA kernel tables, then the kernels (one file per ISA)
SOURCES = ["module.cpp", "validate.cpp", "pack.cpp", "config.cpp", "threadpool.cpp",
           "ref.cpp", "avx2.cpp", "avx512.cpp"]

ext = Pybind11Extension(
    "nas.kernels._C",
    [f"nas/kernels/csrc/{s}" for s in SOURCES],
    extra_compile_args=FLAGS,
    define_macros=[("NASK_BUILD_FLAGS", '"' + " ".join(FLAGS) + '"')],
    cxx_std=17,
)

setup(ext_modules=[ext])
