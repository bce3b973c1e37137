"""Test-wide settings."""

import os

# As in nas/cli.py: passive OpenMP waiting, set before torch is imported by any test module.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
