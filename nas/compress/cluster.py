"""Weight clustering (Deep Compression): each layer's weights share `k` centroids found by k-means.

Storage compression only: a clustered layer is stored as log2(k)-bit indices plus a k-entry codebook, but it runs
on the dense kernels at the same speed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ClusterReport:
    """Per-network outcome: clusters per layer, bits per stored index, dense fp32 vs clustered bytes."""

    clusters: int
    layers: int
    weights: int
    index_bits: int
    dense_bytes: int
    clustered_bytes: int

    @property
    def ratio(self) -> float:
        return self.dense_bytes / max(self.clustered_bytes, 1)


def kmeans_1d(values: torch.Tensor, k: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on a 1-D tensor with linear initialisation (Deep Compression's best); (centroids, labels)."""
    v = values.detach().flatten().double()
    k = min(k, v.numel())
    centroids = torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    labels = torch.zeros(v.numel(), dtype=torch.long)
    for _ in range(iters):
        labels = (v[:, None] - centroids[None, :]).abs().argmin(1)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, v)
        counts = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, torch.ones_like(v))
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        if torch.allclose(new, centroids):
            break
        centroids = new
    labels = (v[:, None] - centroids[None, :]).abs().argmin(1)
    return centroids.float(), labels


def cluster_weights(model: nn.Module, clusters: int = 16, min_weights: int = 64) -> tuple[nn.Module, ClusterReport]:
    """A copy of `model` whose conv/linear weights (layers with >= `min_weights` weights) use `clusters` values.

    Biases and batch-norm parameters are left alone. Fine-tuning with shared centroids is not done here.
    """
    if clusters < 2:
        raise ValueError(f"cluster_weights: clusters must be >= 2, got {clusters}")
    out = copy.deepcopy(model)
    bits = math.ceil(math.log2(clusters))
    n_layers = n_weights = dense = packed = 0
    with torch.no_grad():
        for m in out.modules():
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            w = m.weight
            dense += 4 * w.numel()
            if w.numel() < min_weights:
                packed += 4 * w.numel()
                continue
            centroids, labels = kmeans_1d(w, clusters)
            w.copy_(centroids[labels].view_as(w))
            n_layers += 1
            n_weights += w.numel()
            packed += math.ceil(w.numel() * bits / 8) + 4 * len(centroids)
    return out, ClusterReport(clusters, n_layers, n_weights, bits, dense, packed)
