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


def multigpu_record(parallelism: str, tokens_per_s: float, **extra) -> dict:
    """A `multigpu` stage's record of 8B v2 as the report reads it: one GPU, or two processes."""
    gpus = {"0": 38.0} if parallelism == "none" else {"0": 19.5, "1": 19.6}
    return {
        "kind": "multigpu",
        "size": "8b",
        "version": "v2",
        "variant": "auto",
        "parallelism": parallelism,
        "processes": 1 if parallelism == "none" else 2,
        "cap_gib": None,
        "status": "ok",
        "tokens_per_s": tokens_per_s,
        "peak_gib": gpus,
        "peak_before_timed_gib": gpus,
        "losses": [12.75],
        **extra,
    }
