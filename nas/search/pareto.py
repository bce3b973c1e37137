"""Pareto fronts and 2-D hypervolume of (accuracy up, latency down) points."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_mask(acc: Sequence[float], lat: Sequence[float]) -> list[bool]:
    """True for points no other point dominates (higher-or-equal accuracy and lower-or-equal latency, one strict)."""
    n = len(acc)
    if len(lat) != n:
        raise ValueError(f"lat: expected {n} values like acc, got {len(lat)}")
    mask = []
    for i in range(n):
        dominated = any(
            acc[j] >= acc[i] and lat[j] <= lat[i] and (acc[j] > acc[i] or lat[j] < lat[i]) for j in range(n)
        )
        mask.append(not dominated)
    return mask


def hypervolume(acc: Sequence[float], lat: Sequence[float], ref_acc: float, ref_lat: float) -> float:
    """Area dominated by the points and bounded by the reference point (accuracy `ref_acc`, latency `ref_lat`).

    Points worse than the reference in either objective contribute nothing.
    """
    pts = sorted((lt, a) for a, lt in zip(acc, lat, strict=True) if a > ref_acc and lt < ref_lat)
    area, best_acc = 0.0, ref_acc
    # sweep latency from fast to slow; each point adds the strip between its accuracy and the best so far
    for i, (lt, a) in enumerate(pts):
        if a > best_acc:
            best_acc = a
        next_lat = pts[i + 1][0] if i + 1 < len(pts) else ref_lat
        area += (next_lat - lt) * (best_acc - ref_acc)
    return area
