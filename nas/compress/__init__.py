"""Compression after search: structured pruning (NetAdapt), quantization (PTQ, QAT, mixed precision), clustering.

>>> from nas.compress import prune, quantize_, QuantConfig
"""

from nas.compress.cluster import ClusterReport, cluster_weights
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

__all__ = [
    "ChannelGroup", "ClusterReport", "SparsityReport", "channel_groups", "cluster_weights", "importance",
    "magnitude_prune", "prune", "prune_channels", "pruned_arch",
]
