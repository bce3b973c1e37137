"""Exported checkpoints: save / load a quantized network that runs on the kernels, ONNX QDQ export.

>>> import nas
>>> model = nas.load("results/run/final")      # QuantizedModel
>>> labels = model.predict(x)                  # float NCHW input, integer kernels
"""

from nas.export.checkpoint import FORMAT, FORMAT_VERSION, CheckpointError, load, read_metadata, save
from nas.export.model import QuantizedModel
from nas.export.onnx_qdq import run_onnx, to_onnx

__all__ = ["FORMAT", "FORMAT_VERSION", "CheckpointError", "QuantizedModel", "load", "read_metadata", "run_onnx",
           "save", "to_onnx"]


def __getattr__(name: str) -> object:  # lazy: the pipeline imports nas.compress, which imports this package
    if name in ("FinalizeConfig", "FinalizeReport", "finalize", "load_fp32", "save_fp32"):
        from nas.export import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'nas.export' has no attribute {name!r}")
