"""The FSDP step bench times Qwen3-8B v2's trained tensors: every LoRA matrix and both embeddings, 506 in all."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO

from medtune.model.memory import ModelShape
from medtune.model.qwen3_sizes import qwen3_config


def test_the_bench_times_every_tensor_v2_trains_on_8b():
    spec = importlib.util.spec_from_file_location("fsdp_step_overhead", REPO / "bench" / "fsdp_step_overhead.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shapes = bench.trained_shapes("8b", 64, 1)
    shape = ModelShape.from_config(qwen3_config("8b"))
    lora = shape.layers * 64 * sum(i + o for i, o in shape.projections().values())
    assert len(shapes) == 36 * 7 * 2 + 2 == 506
    assert sum(rows * columns for rows, columns in shapes) == lora + 2 * shape.embedding_weights()
    assert bench.trained_shapes("8b", 64, 64)[0] == (64, 4096 // 64)
