"""nas: hardware-aware neural architecture search for CNNs on CPUs and edge devices."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:  # lazy: `import nas` must not import torch
    if name == "load":
        from nas.export import load

        return load
    raise AttributeError(f"module 'nas' has no attribute {name!r}")
