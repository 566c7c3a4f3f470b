"""The bench scripts are not a package: tests load bench/gpu_speed.py as a module."""

from __future__ import annotations

import importlib.util

import pytest
from tests.conftest import REPO


@pytest.fixture(scope="module")
def gpu_speed():
    spec = importlib.util.spec_from_file_location("gpu_speed", REPO / "bench" / "gpu_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
