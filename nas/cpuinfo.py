"""What this machine's CPU is: its model name and feature flags, read from /proc/cpuinfo (one reader for the latency
devices' fingerprints, the training back end's bf16 check and the ONNX export's weight type)."""

from __future__ import annotations

import platform


def _field(*keys: str) -> str | None:
    """The value of the first /proc/cpuinfo line that starts with one of `keys` (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(keys):
                    return line.split(":", 1)[1]
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's processor string)."""
    name = _field("model name")
    return name.strip() if name is not None else platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (x86 `flags`, ARM `Features`; empty where there is none)."""
    return set((_field("flags", "Features") or "").split())
