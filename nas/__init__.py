"""nas: hardware-aware neural architecture search for CNNs on CPUs and edge devices.

This package imports nothing of its own: importing any `nas.X` runs this file first, so anything imported here would
sit on every import path (and could close a cycle). Load an exported checkpoint with `from nas.export import load`.
"""

__version__ = "0.1.0"
