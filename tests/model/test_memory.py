"""The memory model against every peak the bench measured whose config can be rebuilt (within 15%).

Each calibration point: the model size (Qwen3 configs as bench/gpu_speed.py builds them), recipe, the speed
settings of the bench variant, the steps that were timed (the peak is reset after warm-up, so only their packed
rows count), the data-parallel processes, and the measured `peak_gib` (torch.cuda.max_memory_allocated), with the
results file and line it comes from. All ran the fused LoRA of attempt #12 or PEFT's forward (`fused_lora=false`),
varlen attention, bf16 autocast and Liger, on the shipped data's v1/v2 split with paged 8-bit AdamW.
"""

from __future__ import annotations

import json

import pytest
from tests.conftest import CONFIGS

from medtune.config import load_config
from medtune.data.prepare import prepare_data
from medtune.model.memory import (
    GIB,
    Levers,
    MemorySettings,
    ModelShape,
    estimate,
    kept_layer_bytes_per_token,
    nf4_bytes_per_weight,
    packed_rows,
    read_model_shape,
)
from medtune.model.qwen3_sizes import qwen3_config

VARIANTS = {  # bench/gpu_speed.py VARIANTS (only the keys that differ from today's defaults)
    "auto": [],
    "row_ckpt50": ["speed.checkpoint_fraction=0.5"],
    "row_ckpt85": ["speed.checkpoint_fraction=0.85"],
    "row_ckpt100": ["speed.checkpoint_fraction=1.0"],
    "row_ckpt0": ["speed.checkpoint_fraction=0.0"],
    "fused": ["speed.packed_row_tokens=null", "speed.checkpoint_fraction=0.65"],
    "peft_lora": ["speed.fused_lora=false", "speed.packed_row_tokens=null", "speed.checkpoint_fraction=0.65"],
    "peft_row": ["speed.fused_lora=false", "speed.checkpoint_fraction=0.65"],
}
CALL5, CALL6 = "bench/results/2026-11-29-call5/r/results.jsonl", "bench/results/2026-11-29-call6/r/results.jsonl"
MULTI = "bench/results/2026-11-30-multigpu/"
CALIBRATION_CALL = "bench/results/2026-11-30-memory-calibration/results.jsonl"
LOSS_FIX = (
    "bench/results/2026-11-30-memory-loss-fix/results.jsonl"  # after the loss freed its chunks and scaled in place
)

# (size, version, variant, first timed step, timed steps, processes, measured GiB, where)
CALIBRATION = [
    ("1.7b", "v2", "auto", 2, 4, 1, 14.737, f"{CALL6} line 1"),
    ("1.7b", "v2", "row_ckpt85", 2, 4, 1, 11.431, f"{CALL6} line 2"),
    ("1.7b", "v2", "row_ckpt100", 1, 3, 1, 6.447, f"{LOSS_FIX} line 2"),
    ("1.7b", "v1", "auto", 2, 4, 1, 12.993, f"{CALL6} line 7"),
    ("1.7b", "v1", "row_ckpt85", 2, 4, 1, 9.684, f"{CALL6} line 8"),
    ("1.7b", "v1", "row_ckpt100", 1, 3, 1, 4.678, f"{LOSS_FIX} line 1"),
    ("1.7b", "v1", "row_ckpt0", 1, 3, 1, 36.169, f"{CALIBRATION_CALL} line 4"),
    ("1.7b", "v2", "row_ckpt0", 1, 3, 1, 37.911, f"{CALIBRATION_CALL} line 11"),
    ("8b", "v1", "row_ckpt50", 1, 3, 1, 51.742, f"{CALIBRATION_CALL} line 18"),
    ("1.7b", "v2", "row_ckpt50", 2, 4, 1, 22.458, f"{CALL5} line 6"),
    ("1.7b", "v2", "fused", 2, 4, 1, 13.456, f"{CALL5} line 4"),
    ("1.7b", "v2", "peft_lora", 2, 4, 1, 14.624, f"{CALL5} line 3"),
    ("1.7b", "v2", "peft_row", 2, 4, 1, 19.924, f"{CALL5} line 5"),
    ("1.7b", "v1", "peft_lora", 2, 4, 1, 12.875, f"{CALL5} line 12"),
    ("8b", "v2", "auto", 2, 4, 1, 38.281, f"{MULTI}call1-results.jsonl line 1"),
    ("8b", "v2", "auto", 3, 6, 1, 39.377, f"{MULTI}call2-results.jsonl line 1"),
    ("14b", "v2", "auto", 3, 6, 1, 56.982, f"{MULTI}call2-results.jsonl line 7"),
    ("8b", "v2", "auto", 3, 6, 2, 30.331, f"{MULTI}call2-results.jsonl line 2 (DDP, rank 0)"),
    ("8b", "v1", "row_ckpt100", 1, 3, 1, 13.605, f"{CALIBRATION_CALL} line 15"),
    ("8b", "v2", "row_ckpt100", 1, 3, 1, 17.436, f"{LOSS_FIX} line 6"),
]


@pytest.fixture(scope="module")
def train_lengths(tokenizer) -> list[int]:
    """Token lengths of the v1/v2 training split of the shipped data, as the bench encoded it."""
    cfg = load_config(CONFIGS / "v2.yaml", ["model.name_or_path=tiny"])
    return [len(encoded) for encoded in prepare_data(cfg, tokenizer).train.encoded]


def shape_of(size: str) -> ModelShape:
    return ModelShape.from_config(qwen3_config(size))


@pytest.mark.parametrize(
    "size, version, variant, first, steps, processes, measured, where",
    CALIBRATION,
    ids=[f"{p[0]}-{p[1]}-{p[2]}-{p[5]}proc-{p[6]}" for p in CALIBRATION],
)
def test_prediction_within_15_percent_of_the_measured_peak(
    train_lengths, size, version, variant, first, steps, processes, measured, where
):
    cfg = load_config(CONFIGS / f"{version}.yaml", ["model.name_or_path=tiny", *VARIANTS[variant]])
    rows = packed_rows(
        train_lengths,
        cfg.train.samples_per_step(),
        range(first, first + steps),
        cfg.train.seed,
        cfg.row_tokens(),
        cfg.train.per_device_batch_size,
        processes,
    )
    predicted = estimate(
        shape_of(size), MemorySettings.from_run(cfg, liger=True, processes=processes), Levers.from_run(cfg), rows
    )
    assert predicted.peak_gib == pytest.approx(measured, rel=0.15), f"{where}: {predicted.terms()}"


def test_the_timed_steps_are_the_bench_records_step_tokens(train_lengths):
    """The rows rebuilt here are the bench's: one row per step holding its `step_tokens` (calls 5-6: 12,902 max)."""
    cfg = load_config(CONFIGS / "v2.yaml", ["model.name_or_path=tiny"])
    one_row = packed_rows(train_lengths, 16, range(2, 6), cfg.train.seed, 16384, 4)
    assert (one_row.longest, one_row.most_per_step) == (12902, 1)
    assert packed_rows(train_lengths, 16, range(3, 9), cfg.train.seed, 16384, 4).longest == 13510  # multigpu call 2
    assert packed_rows(train_lengths, 16, range(2, 6), cfg.train.seed, 8192, 4).most_per_step == 2


def test_kept_layer_bytes_match_the_saved_tensors_listed(train_lengths):
    """13h + 9q + 6kv + 7i + 14r bytes per token for Qwen3-1.7B with dropout: 95,104; 1.10 GiB per kept layer was
    measured (call 6: 0.85 -> 0.75 adds 3 layers and 3.31 GiB at 12,902 tokens), which this gives net of the layer
    input."""
    cfg = load_config(CONFIGS / "v1.yaml", ["model.name_or_path=tiny"])
    settings = MemorySettings.from_run(cfg, liger=True)
    per_token = kept_layer_bytes_per_token(shape_of("1.7b"), settings)
    assert per_token == 13 * 2048 + 9 * 2048 + 6 * 1024 + 7 * 6144 + 14 * 64
    assert (per_token - 2 * 2048) * 12902 / GIB == pytest.approx(3.31 / 3, rel=0.02)
    no_dropout = MemorySettings.from_run(load_config(CONFIGS / "v1.yaml", ["lora.dropout=0"]), liger=True)
    assert per_token - kept_layer_bytes_per_token(shape_of("1.7b"), no_dropout) == 5 * 2048 + 2048 + 6144  # the masks


def test_nf4_bytes_and_the_terms_that_make_the_peak():
    assert nf4_bytes_per_weight(double_quant=True) == pytest.approx(0.5 + 1 / 64 + 4 / 64 / 256)
    assert nf4_bytes_per_weight(double_quant=False) == pytest.approx(0.5 + 4 / 64)
    cfg = load_config(CONFIGS / "v2.yaml", ["model.name_or_path=tiny", "speed.checkpoint_fraction=1.0"])
    from medtune.model.memory import Rows

    one = estimate(shape_of("8b"), MemorySettings.from_run(cfg, liger=True), Levers.from_run(cfg), Rows(13000, 1))
    assert sum(one.terms().values()) == pytest.approx(one.peak_bytes)
    assert one.peak_phase == "lm_head gradient accumulator (fp32)"  # a trained 151,936 x 4,096 head
    offloaded = estimate(
        shape_of("8b"),
        MemorySettings.from_run(cfg, liger=True),
        Levers.from_run(cfg.model_copy(update={"speed": cfg.speed.model_copy(update={"offload_activations": True})})),
        Rows(13000, 1),
    )
    saved = one.peak_bytes - offloaded.peak_bytes
    assert saved == pytest.approx((36 - 3) * 2 * 4096 * 13000)  # all but 3 layers' inputs leave the device
    adamw = MemorySettings.from_run(
        load_config(CONFIGS / "v2.yaml", ["model.name_or_path=tiny", "train.optimizer=adamw"]), liger=True
    )
    with_states = estimate(shape_of("8b"), adamw, Levers.from_run(cfg), Rows(13000, 1))
    assert "AdamW states (2 per parameter, the parameter's dtype)" in with_states.persistent
    assert not any("paged" in note for note in with_states.notes) and any("paged" in note for note in one.notes)


def test_the_shape_comes_from_config_json_alone(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(qwen3_config("8b")))
    from medtune.config import ModelConfig

    assert read_model_shape(ModelConfig(name_or_path=str(tmp_path))) == shape_of("8b")  # no weights in the folder
    assert read_model_shape(ModelConfig(name_or_path="tiny")).hidden == 64
    with pytest.raises(ValueError, match="no intermediate_size"):
        ModelShape.from_config({"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 10})
