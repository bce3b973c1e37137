"""The C runtime (csrc/nas_runtime.h): a C program built against libnas_runtime runs exported checkpoints with
logits bit-identical to QuantizedNetwork.run, and every bad checkpoint gives an error code naming the file."""

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from nas.export import load
from nas.kernels import available_isas, capi
from nas.kernels.memory import peak_activation_bytes

pytestmark = pytest.mark.skipif(
    not (shutil.which("cmake") and shutil.which("cc") and shutil.which("c++")),
    reason="needs cmake and a C/C++ compiler to build libnas_runtime")

NAS_OK, NAS_ERR_ARGUMENT, NAS_ERR_IO, NAS_ERR_FORMAT, NAS_ERR_HASH, NAS_ERR_ISA = 0, 1, 2, 3, 4, 5


@pytest.fixture(scope="session")
def runtime(request):
    """libnas_runtime built once, in pytest's cache (CMake rebuilds only what changed since the last run)."""
    key = hashlib.sha256(str(capi.CSRC.resolve()).encode()).hexdigest()[:8]
    out = capi.build(request.config.cache.mkdir(f"nas_runtime_{key}"), jobs=os.cpu_count() or 2)
    lib = ctypes.CDLL(str(out.shared))
    lib.nas_model_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.nas_model_free.argtypes = [ctypes.c_void_p]
    lib.nas_model_num_classes.argtypes = [ctypes.c_void_p]
    lib.nas_model_isa.argtypes = [ctypes.c_void_p]
    lib.nas_model_isa.restype = ctypes.c_char_p
    lib.nas_model_input_shape.argtypes = [ctypes.c_void_p] + [ctypes.POINTER(ctypes.c_int)] * 3
    for run in (lib.nas_model_run, lib.nas_model_run_u8):
        run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    lib.nas_last_error.restype = ctypes.c_char_p
    lib.nas_model_arena_bytes.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_size_t)]
    return out, lib


def _load(lib, path):
    model = ctypes.c_void_p()
    status = lib.nas_model_load(str(path).encode(), ctypes.byref(model))
    return status, model, lib.nas_last_error().decode()


def _run(lib, model, x: np.ndarray, threads: int = 1) -> np.ndarray:
    logits = np.empty((x.shape[0], lib.nas_model_num_classes(model)), dtype=np.float32)
    run = lib.nas_model_run_u8 if x.dtype == np.uint8 else lib.nas_model_run
    assert run(model, x.ctypes.data, x.shape[0], logits.ctypes.data, threads) == NAS_OK, lib.nas_last_error()
    return logits


@pytest.mark.parametrize("name", ["int8", "w4a8"])
def test_c_program_logits_are_bit_identical_to_the_executor(runtime, checkpoints, name, tmp_path):
    out, _ = runtime
    x = np.random.default_rng(0).standard_normal((3, 1, 16, 16)).astype(np.float32)
    x.tofile(tmp_path / "x.f32")
    run = subprocess.run([str(out.example), str(checkpoints[name]), str(tmp_path / "x.f32"), "3",
                          str(tmp_path / "y.f32"), "2"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    logits = np.fromfile(tmp_path / "y.f32", dtype=np.float32).reshape(3, 10)
    ck = load(checkpoints[name])
    assert np.array_equal(logits, ck.network.run(x, threads=2))
    assert f"activation arena {peak_activation_bytes(ck.arch, 3, threads=2)} bytes" in run.stdout, run.stdout


@pytest.mark.parametrize("isa", available_isas())
def test_library_matches_on_every_isa_for_float_and_uint8_input(runtime, checkpoints, isa, monkeypatch):
    _, lib = runtime
    monkeypatch.setenv("NAS_KERNELS_ISA", isa)
    net = load(checkpoints["w4a8"]).network
    status, model, err = _load(lib, checkpoints["w4a8"])
    assert status == NAS_OK, err
    try:
        assert lib.nas_model_isa(model).decode() == isa
        c, h, w = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        assert lib.nas_model_input_shape(model, ctypes.byref(c), ctypes.byref(h), ctypes.byref(w)) == NAS_OK
        assert (c.value, h.value, w.value) == (1, 16, 16)
        rng = np.random.default_rng(1)
        for batch in (1, 4, 1):  # the plan is rebuilt when the batch size changes
            xf = rng.standard_normal((batch, 1, 16, 16)).astype(np.float32)
            assert np.array_equal(_run(lib, model, xf), net.run(xf, isa=isa))
        xu = rng.integers(0, 256, size=(5, 16, 16, 1), dtype=np.uint8)
        assert np.array_equal(_run(lib, model, xu, threads=2), net.run(xu, isa=isa))
        logits = np.empty((1, 10), dtype=np.float32)
        assert lib.nas_model_run(model, xf.ctypes.data, 0, logits.ctypes.data, 1) == NAS_ERR_ARGUMENT
        assert "batch=0" in lib.nas_last_error().decode()
    finally:
        lib.nas_model_free(model)


def test_the_runtime_fuses_blocks_in_the_predicted_arena(runtime, checkpoints):
    """The C runtime runs the blocks where fusing pays fused, in the arena the Python executor plans and
    `peak_activation_bytes` predicts from the architecture (smaller than layer by layer for this network), for every
    batch and thread count (the plan is rebuilt when either changes), with bit-identical logits."""
    _, lib = runtime
    ck = load(checkpoints["int8"])
    assert peak_activation_bytes(ck.arch) < peak_activation_bytes(ck.arch, fused=False)  # fusing shows in the bytes
    status, model, err = _load(lib, checkpoints["int8"])
    assert status == NAS_OK, err
    try:
        rng = np.random.default_rng(2)
        got = ctypes.c_size_t()
        for batch, threads in [(1, 1), (1, 2), (1, 3), (4, 1), (4, 3), (1, 1)]:
            assert lib.nas_model_arena_bytes(model, batch, threads, ctypes.byref(got)) == NAS_OK, lib.nas_last_error()
            want = peak_activation_bytes(ck.arch, batch, threads=threads)
            plan = ck.network.memory_plan((batch, 16, 16, 1), threads=threads)
            assert got.value == want == plan.arena_bytes
            assert any(plan.in_place)  # SE and stride-1 depthwise steps over their inputs, in the runtime's arena too
            x = rng.integers(0, 256, size=(batch, 16, 16, 1), dtype=np.uint8)
            assert np.array_equal(_run(lib, model, x, threads=threads), ck.network.run(x, threads=threads))
            assert np.array_equal(_run(lib, model, x, threads=threads), ck.network.run(x, fused=False))
        for batch, threads, fragment in [(0, 1, "batch=0"), (1, 0, "threads=0"), (1, 1025, "threads=1025")]:
            assert lib.nas_model_arena_bytes(model, batch, threads, ctypes.byref(got)) == NAS_ERR_ARGUMENT
            assert fragment in lib.nas_last_error().decode()
        assert lib.nas_model_arena_bytes(model, 1, 1, None) == NAS_ERR_ARGUMENT
    finally:
        lib.nas_model_free(model)


def _edit(ck: Path, file: str, change, rehash: bool) -> None:
    """Rewrite one file of a checkpoint copy (bytes -> bytes); `rehash` updates its SHA-256 in metadata.json so the
    change reaches the parser."""
    (ck / file).write_bytes(change((ck / file).read_bytes()))
    if rehash:
        meta = json.loads((ck / "metadata.json").read_text())
        meta["files"][file] = hashlib.sha256((ck / file).read_bytes()).hexdigest()
        (ck / "metadata.json").write_text(json.dumps(meta))


def _safetensors_header(data: bytes, change) -> bytes:
    n = int.from_bytes(data[:8], "little")
    header = change(json.loads(data[8:8 + n]))
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def _set_dtype(name: str, dtype: str):
    def change(h: dict) -> dict:
        h[name]["dtype"] = dtype
        return h
    return change


# case: (file, change (None: delete the file), update its hash in metadata.json, status, message fragment)
CORRUPTIONS = {
    "missing file": ("weights.safetensors", None, False, NAS_ERR_IO, "weights.safetensors: missing"),
    "truncated, hash kept": ("weights.safetensors", lambda b: b[: len(b) // 2], False, NAS_ERR_HASH,
                             "weights.safetensors: content does not match its hash"),
    "truncated safetensors": ("weights.safetensors", lambda b: b[: len(b) - 100], True, NAS_ERR_FORMAT,
                              "weights.safetensors: tensor"),
    "corrupt safetensors header": ("weights.safetensors", lambda b: b[:8] + b"!" + b[9:], True, NAS_ERR_FORMAT,
                                   "weights.safetensors header: corrupt or truncated JSON"),
    "huge header length": ("weights.safetensors", lambda b: b"\xff" * 8 + b[8:], True, NAS_ERR_FORMAT,
                           "weights.safetensors: truncated"),
    "wrong weight dtype": ("weights.safetensors",
                           lambda b: _safetensors_header(b, _set_dtype("layers.stem.spec.weight", "U8")), True,
                           NAS_ERR_FORMAT, "('stem').spec.weight: expected dtype I8, got U8 ("),
    "truncated network.json": ("network.json", lambda b: b[: len(b) // 3], True, NAS_ERR_FORMAT,
                               "network.json: corrupt or truncated JSON"),
    "unknown op": ("network.json", lambda b: b.replace(b'"DepthwiseSpec"', b'"FancySpec"', 1), True,
                   NAS_ERR_FORMAT, "network.json layers[1] ('blocks.0.dw'): unknown op type 'FancySpec'"),
    "bad stride": ("network.json", lambda b: b.replace(b'"stride": 1', b'"stride": 3', 1), True, NAS_ERR_FORMAT,
                   "network.json layers[0] ('stem').spec: stride: expected 1 or 2, got 3"),
    "missing array": ("network.json", lambda b: b.replace(b'"layers.stem.spec.bias"', b'"nope"', 1), True,
                      NAS_ERR_FORMAT, "weights.safetensors: array 'nope' is missing"),
    "newer format": ("metadata.json", lambda b: b.replace(b'"format_version": "1.0"', b'"format_version": "2.0"'),
                     False, NAS_ERR_FORMAT, "metadata.json: format version 2.0 is incompatible"),
    "metadata not JSON": ("metadata.json", lambda b: b"\x00\xff" + b, False, NAS_ERR_FORMAT,
                          "metadata.json: corrupt or truncated JSON"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_bad_checkpoints_give_an_error_code_naming_the_file(runtime, checkpoints, case, tmp_path):
    _, lib = runtime
    file, change, rehash, code, fragment = CORRUPTIONS[case]
    ck = tmp_path / "ck"
    shutil.copytree(checkpoints["int8"], ck)
    if change is None:
        (ck / file).unlink()
    else:
        _edit(ck, file, change, rehash)
    status, model, err = _load(lib, ck)
    assert (status, model.value) == (code, None), err
    assert fragment in err and f"{ck}/" in err, err


def test_every_truncation_of_network_json_is_an_error_not_a_crash(runtime, checkpoints, tmp_path):
    _, lib = runtime
    ck = tmp_path / "ck"
    shutil.copytree(checkpoints["w4a8"], ck)
    text = (checkpoints["w4a8"] / "network.json").read_bytes()
    for cut in range(0, len(text) - 2, max(1, len(text) // 97)):
        _edit(ck, "network.json", lambda _, cut=cut: text[:cut], rehash=True)
        status, _, err = _load(lib, ck)
        assert status == NAS_ERR_FORMAT and "network.json" in err, (cut, err)


def test_missing_directory_and_unknown_isa(runtime, tmp_path, checkpoints, monkeypatch):
    out, lib = runtime
    status, _, err = _load(lib, tmp_path / "nope")
    assert status == NAS_ERR_IO and f"checkpoint {tmp_path / 'nope'} does not exist" in err
    monkeypatch.setenv("NAS_KERNELS_ISA", "sse9")
    status, _, err = _load(lib, checkpoints["int8"])
    assert status == NAS_ERR_ISA and err.startswith("NAS_KERNELS_ISA=sse9: expected one of 'reference'")
    run = subprocess.run([str(out.example), str(checkpoints["int8"]), "x", "1", "y"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1 and "NAS_KERNELS_ISA=sse9" in run.stderr


@pytest.mark.parametrize("name", ["stem-project", "stem-project-w4a8", "stem-se"])
def test_the_runtime_fuses_the_stem_where_the_executor_does(runtime, stem_checkpoints, name):
    """The stem fused into the first block (with its project, or its depthwise alone before SE): the C runtime takes
    the executor's decision at every batch and thread count (it fuses at some and not at others), in the predicted
    arena, with bit-identical logits."""
    from nas.kernels.memory import arch_steps

    _, lib = runtime
    ck = load(stem_checkpoints[name])
    r, c = ck.arch.resolution, ck.arch.in_channels
    status, model, err = _load(lib, stem_checkpoints[name])
    assert status == NAS_OK, err
    try:
        rng = np.random.default_rng(3)
        got = ctypes.c_size_t()
        decided = set()
        for batch, threads in [(1, 1), (1, 2), (1, 3), (3, 1), (3, 2), (3, 3)]:
            decided.add(len(arch_steps(ck.arch, batch, threads=threads)[0]) > 1)
            assert lib.nas_model_arena_bytes(model, batch, threads, ctypes.byref(got)) == NAS_OK, lib.nas_last_error()
            want = peak_activation_bytes(ck.arch, batch, threads=threads)
            assert got.value == want == ck.network.memory_plan((batch, r, r, c), threads=threads).arena_bytes
            x = rng.integers(0, 256, size=(batch, r, r, c), dtype=np.uint8)
            logits = _run(lib, model, x, threads=threads)
            assert np.array_equal(logits, ck.network.run(x, threads=threads))
            assert np.array_equal(logits, ck.network.run(x, fused=False))
        assert decided == {True, False}
    finally:
        lib.nas_model_free(model)
