"""Exported checkpoints: save / load a quantized network that runs on the kernels, ONNX QDQ export.

>>> from nas.export import load
>>> model = load("results/run/final/int8")    # QuantizedModel
>>> labels = model.predict(x)                  # float NCHW input, integer kernels

The pipeline that produces them (`finalize`: prune, quantize, export) is imported from `nas.export.pipeline`, not
re-exported here: it depends on compression, which imports this package's `QuantizedModel`.
"""

from nas.export.checkpoint import FORMAT, FORMAT_VERSION, CheckpointError, load, read_metadata, save
from nas.export.model import QuantizedModel
from nas.export.onnx_qdq import onnx_runner, run_onnx, to_onnx

__all__ = ["FORMAT", "FORMAT_VERSION", "CheckpointError", "QuantizedModel", "load", "onnx_runner", "read_metadata",
           "run_onnx", "save", "to_onnx"]
