"""Prerequisites: a test without its tool, service or privilege skips by hand and fails under CI=true."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def needs(
    condition: bool, reason: str, *, failure: str = "prerequisite missing under CI=true", pytrace: bool = True
) -> None:
    """Skip without ``condition`` when run by hand; under CI=true a missing prerequisite fails the test
    with ``failure: reason``."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{failure}: {reason}", pytrace=pytrace)
    pytest.skip(reason)


def is_root() -> bool:
    """Root, iproute2 and the CNI plugins: what the local backend needs."""
    return os.geteuid() == 0 and Path("/usr/lib/cni/bridge").exists() and shutil.which("ip") is not None
