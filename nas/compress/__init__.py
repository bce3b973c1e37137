"""Compression after search: structured pruning (NetAdapt), quantization (PTQ, QAT, mixed precision), clustering.

>>> from nas.compress import QuantConfig, prune, quantize_model
>>> qmodel, report = quantize_model(model, QuantConfig(weight_bits=4, qat_steps=300, lsq=True), calib=x, train=(x, y))

Quantized networks are built by the kernel library's one lowering (`nas.kernels.lower`) on the grid of a
fake-quant simulator (`QuantSim`), so calibration choices and QAT-learned scales reach the integer executor.
"""

from nas.compress.cluster import ClusterReport, cluster_weights
from nas.compress.fakequant import QuantSim
from nas.compress.mixed import MixedReport, mixed_precision, sensitivities
from nas.compress.netadapt import NetAdaptConfig, netadapt
from nas.compress.prune import (
    ChannelGroup,
    SparsityReport,
    channel_groups,
    importance,
    magnitude_prune,
    prune,
    prune_channels,
    pruned_arch,
)
from nas.compress.quantize import QuantConfig, QuantReport, qat, quantize_model, quantized_model

__all__ = [
    "ChannelGroup", "ClusterReport", "MixedReport", "NetAdaptConfig", "QuantConfig", "QuantReport", "QuantSim",
    "SparsityReport", "channel_groups", "cluster_weights", "importance", "magnitude_prune", "mixed_precision",
    "netadapt", "prune", "prune_channels", "pruned_arch", "qat", "quantize_model", "quantized_model",
    "sensitivities",
]
