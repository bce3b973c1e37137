"""nas: hardware-aware neural architecture search for CNNs on CPUs and edge devices."""

__version__ = "0.1.0"
