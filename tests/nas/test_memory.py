"""The allocator settings the CLI applies are accepted by glibc (mallopt refuses out-of-range values)."""

import platform
import sys

import pytest

from nas.memory import keep_heap


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_heap_settings_are_accepted():
    assert keep_heap() is True
