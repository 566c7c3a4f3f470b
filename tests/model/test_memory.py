"""The memory model against every peak the bench measured whose config can be rebuilt (within 15%).

Each calibration point: the model size (Qwen3 configs as bench/gpu_speed.py builds them), recipe, the speed
settings of the bench variant, the steps that were timed (the peak is reset after warm-up, so only their packed
rows count), the data-parallel processes, and the measured `peak_gib` (torch.cuda.max_memory_allocated), with the
results file and line it comes from. All ran the fused LoRA of attempt #12 or PEFT's forward (`fused_lora=false`),
varlen attention, bf16 autocast and Liger, on the shipped data's v1/v2 split with paged 8-bit AdamW; the FSDP points
(FSDP_CALIBRATION) with torch AdamW, as `auto` resolves under FSDP.
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
    MemoryEstimate,
    MemorySettings,
    ModelShape,
    Rows,
    estimate,
    kept_layer_bytes_per_token,
    nf4_absmax_bytes_per_weight,
    nf4_bytes_per_weight,
    packed_rows,
    read_model_shape,
)
from medtune.model.qwen3_sizes import qwen3_config

VARIANTS = {  # bench/gpu_speed.py VARIANTS (only the keys that differ from today's defaults)
    "auto": [],
    "row_ckpt50": ["speed.checkpoint_fraction=0.5"],
    "row_ckpt85": ["speed.checkpoint_fraction=0.85"],
    "plan_ckpt90": ["speed.checkpoint_fraction=0.9"],  # what the memory plan chose for 14B v2 under a 24 GiB cap
    "row_ckpt100": ["speed.checkpoint_fraction=1.0"],
    "row_ckpt0": ["speed.checkpoint_fraction=0.0"],
    "fused": ["speed.packed_row_tokens=null", "speed.checkpoint_fraction=0.65"],
    "peft_lora": ["speed.fused_lora=false", "speed.packed_row_tokens=null", "speed.checkpoint_fraction=0.65"],
    "peft_row": ["speed.fused_lora=false", "speed.checkpoint_fraction=0.65"],
}
CALL5, CALL6 = "bench/results/2026-11-29-call5/r/results.jsonl", "bench/results/2026-11-29-call6/r/results.jsonl"
MULTI = "bench/results/2026-11-30-multigpu/"
TODAY = "bench/results/2026-12-01-multigpu/"
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
    ("32b", "v1", "row_ckpt100", 1, 2, 1, 35.991, f"{MULTI}call5-results.jsonl line 2"),
]
# The same columns and the optimizer, for train.parallelism fsdp: the peak of rank 0, whose rows `packed_rows`
# rebuilds. The 8B v2 FSDP peaks of 2026-11-30 and call A are left out: they ran with a trained lm_head gathered whole
# for the loss (26.3 GiB in call A), which the model no longer prices now that the head is split by rows. The shared-GPU
# points (every process on one H200, through gloo) are each process's own allocator's peak, as on its own GPU.
ONE_GPU = "bench/results/2026-12-01-one-gpu-stand-ins/"
FSDP_CALIBRATION = [
    ("32b", "v1", "row_ckpt100", 1, 2, 2, 20.699, f"{MULTI}call5-results.jsonl line 1 (24 GiB cap, rank 0)", "adamw"),
    ("8b", "v2", "auto", 3, 5, 2, 18.968, f"{ONE_GPU}results-1.jsonl line 4 (shared GPU, rank 0)", "auto"),
    ("14b", "v2", "plan_ckpt90", 1, 2, 2, 18.005, f"{ONE_GPU}results-2.jsonl line 1 (24 GiB cap, shared)", "auto"),
    ("32b", "v1", "row_ckpt100", 1, 2, 2, 19.414, f"{ONE_GPU}results-4.jsonl line 1 (24 GiB cap, shared)", "auto"),
]
POINTS = [(*point, "auto", False) for point in CALIBRATION] + [(*point, True) for point in FSDP_CALIBRATION]


@pytest.fixture(scope="module")
def train_lengths(tokenizer) -> list[int]:
    """Token lengths of the v1/v2 training split of the shipped data, as the bench encoded it."""
    cfg = load_config(CONFIGS / "v2.yaml", ["model.name_or_path=tiny"])
    return [len(encoded) for encoded in prepare_data(cfg, tokenizer).train.encoded]


def shape_of(size: str) -> ModelShape:
    return ModelShape.from_config(qwen3_config(size))


@pytest.mark.parametrize(
    "size, version, variant, first, steps, processes, measured, where, optimizer, fsdp",
    POINTS,
    ids=[f"{p[0]}-{p[1]}-{p[2]}-{p[5]}proc{'-fsdp' if p[9] else ''}-{p[8]}-{p[6]}" for p in POINTS],
)
def test_prediction_within_15_percent_of_the_measured_peak(
    train_lengths, size, version, variant, first, steps, processes, measured, where, optimizer, fsdp
):
    overrides = ["model.name_or_path=tiny", *VARIANTS[variant], f"train.optimizer={optimizer}"]
    cfg = load_config(CONFIGS / f"{version}.yaml", overrides)
    rows = packed_rows(
        train_lengths,
        cfg.train.samples_per_step(),
        range(first, first + steps),
        cfg.train.seed,
        cfg.row_tokens(),
        cfg.train.per_device_batch_size,
        processes,
    )
    settings = MemorySettings.from_run(cfg, liger=True, processes=processes, fsdp=fsdp)
    predicted = estimate(shape_of(size), settings, Levers.from_run(cfg), rows)
    assert predicted.peak_gib == pytest.approx(measured, rel=0.15), f"{where}: {predicted.terms()}"


def test_the_timed_steps_are_the_bench_records_step_tokens(train_lengths):
    """The rows rebuilt here are the bench's: one row per step holding its `step_tokens` (calls 5-6: 12,902 max)."""
    cfg = load_config(CONFIGS / "v2.yaml", ["model.name_or_path=tiny"])
    one_row = packed_rows(train_lengths, 16, range(2, 6), cfg.train.seed, 16384, 4)
    assert (one_row.longest, one_row.most_per_step) == (12902, 1)
    assert packed_rows(train_lengths, 16, range(3, 9), cfg.train.seed, 16384, 4).longest == 13510  # multigpu call 2
    assert packed_rows(train_lengths, 16, range(2, 6), cfg.train.seed, 8192, 4).most_per_step == 2
    assert packed_rows(train_lengths, 16, range(1, 3), cfg.train.seed, 16384, 4).longest == 12902  # multigpu call 5


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


def fsdp_estimate(version: str, size: str, processes: int, rows: Rows, *overrides: str) -> MemoryEstimate:
    cfg = load_config(CONFIGS / f"{version}.yaml", ["model.name_or_path=tiny", *VARIANTS["row_ckpt100"], *overrides])
    settings = MemorySettings.from_run(cfg, liger=True, processes=processes, fsdp=True)
    return estimate(shape_of(size), settings, Levers.from_run(cfg), rows)


def test_fsdp_shards_the_layers_and_trained_weights_and_keeps_the_rest_whole():
    """Per process under FSDP: the 4-bit storage, LoRA (and its gradients and AdamW states) are cut in N; the
    absmax and a frozen, untrained embedding stay whole; the fused LoRA caches no block scales (bf16 storage)."""
    rows = Rows(6000, 1)
    two, four = (fsdp_estimate("v1", "32b", n, rows, "train.optimizer=adamw") for n in (2, 4))
    shape = shape_of("32b")
    linear, embedding = shape.linear_weights(), shape.embedding_weights()
    absmax = nf4_absmax_bytes_per_weight(double_quant=True) * linear
    assert two.persistent["base weights (4-bit NF4, 1/2 per process; absmax whole)"] == pytest.approx(
        linear / 4 + absmax
    )
    assert four.persistent["base weights (4-bit NF4, 1/4 per process; absmax whole)"] == pytest.approx(
        linear / 8 + absmax
    )
    lora = 64 * 64 * sum(i + o for i, o in shape.projections().values())
    assert two.persistent["LoRA adapters (fp32) and their gradients (1/2 per process)"] == pytest.approx(lora * 4)
    assert two.persistent["AdamW states (2 per parameter, the parameter's dtype) (1/2 per process)"] == pytest.approx(
        lora * 4
    )
    assert two.persistent["embed_tokens / lm_head (bf16, frozen)"] == 2 * embedding * 2  # v1: neither is trained
    assert two.persistent["fused LoRA's cached block scales"] == 0
    assert two.held == fsdp_estimate("v1", "32b", 1, rows).held, "a process's activations are those of its rows"
    gathered = (
        two.phases["one layer's backward pass, 2 decoder layers gathered whole"]
        - kept_layer_bytes_per_token(
            shape, MemorySettings.from_run(load_config(CONFIGS / "v1.yaml", ["model.name_or_path=tiny"]), liger=True)
        )
        * 6000
    )
    assert gathered == pytest.approx(2 * (linear / 64 / 2 + lora / 64 * 4) + lora / 64 * 4)


def test_one_fsdp_process_holds_the_whole_model():
    cfg = load_config(CONFIGS / "v1.yaml", ["model.name_or_path=tiny", "train.parallelism=fsdp"])
    assert MemorySettings.from_run(cfg, liger=True, processes=1, fsdp=True) == MemorySettings.from_run(cfg, liger=True)
    assert MemorySettings.from_run(cfg, liger=True, processes=2, fsdp=True).optimizer == "paged_adamw_8bit"


def test_fsdp_pages_a_chunk_of_the_8bit_states_per_process():
    found = fsdp_estimate("v2", "8b", 2, Rows(6000, 1))
    assert not any("AdamW states" in term for term in found.persistent)
    whole = fsdp_estimate("v2", "8b", 1, Rows(6000, 1))
    paged = [note for note in found.notes if note.startswith("paged 8-bit AdamW")]
    assert len(paged) == 1 and "(1/2 per process)" in paged[0]
    one = [note for note in whole.notes if note.startswith("paged 8-bit AdamW")]
    gib = [float(note.split(": ")[1].split(" GiB")[0]) for note in (paged[0], one[0])]
    assert gib[0] == pytest.approx(gib[1] / 2, abs=0.01)


def test_fsdp_prices_a_trained_lm_head_split_by_rows_and_the_embedding_at_the_step_end():
    """v2 on Qwen3-8B (untied): the trained copies, their originals, gradients and optimizer states are sharded; the
    loss gathers every process's hidden states, computes its rows' logits and keeps an fp32 accumulator of its rows."""
    shape = shape_of("8b")
    embedding = shape.embedding_weights()
    found = fsdp_estimate("v2", "8b", 2, Rows(6000, 1))
    originals = found.persistent["embed_tokens / lm_head (bf16, frozen); trained ones' originals 1/2 per process"]
    assert originals == embedding * 2  # 2 originals, 1/2 each
    assert found.persistent["trained embed_tokens / lm_head copies (bf16) (1/2 per process)"] == embedding * 2
    assert found.persistent["lm_head gradient (bf16) (1/2 per process)"] == embedding
    head = found.phases[
        "lm_head rows' gradient accumulator (fp32), every process's hidden states and their gradient (fp32)"
    ]
    everyones_hidden = 2 * shape.hidden * 6000 * 2  # bf16, both processes' tokens; their gradient in fp32: twice that
    chunk = min(load_config(CONFIGS / "v2.yaml", ["model.name_or_path=tiny"]).train.loss_chunk_tokens, 6000)
    logits = 6 * chunk * shape.vocab / 2  # this process's rows only
    assert head == 4 * embedding / 2 + 3 * everyones_hidden + logits + 9 * shape.hidden * 6000
    assert found.peak_phase.startswith("lm_head rows' gradient accumulator")
    assert found.edges == {
        "embed_tokens gathered whole for its backward pass, with its whole gradient (bf16)": 4 * embedding
    }
    several = fsdp_estimate("v2", "8b", 2, Rows(6000, 2))
    assert (
        several.persistent["embed_tokens gradient (bf16) (1/2 per process), from a step's first pass on"] == embedding
    )


def test_one_process_prices_the_whole_head_and_its_accumulator():
    cfg = load_config(CONFIGS / "v2.yaml", ["model.name_or_path=tiny"])
    shape = shape_of("8b")
    found = estimate(shape, MemorySettings.from_run(cfg, liger=True), Levers.from_run(cfg), Rows(6000, 1))
    assert (
        found.phases["lm_head gradient accumulator (fp32)"] == 4 * shape.embedding_weights() + 9 * shape.hidden * 6000
    )


def test_an_edge_of_the_step_counts_without_the_held_activations():
    """A trained, sharded input embedding alone (no trained head) on short rows: its backward pass at the end of the
    step, gathered whole with its gradient, is the peak, and no activation is held then."""
    found = fsdp_estimate("v1", "8b", 2, Rows(256, 1), "lora.modules_to_save=[embed_tokens]")
    edge = "embed_tokens gathered whole for its backward pass, with its whole gradient (bf16)"
    assert found.peak_phase == edge
    assert edge in found.terms() and not set(found.held) & set(found.terms())
    assert found.peak_bytes == pytest.approx(sum(found.persistent.values()) + found.edges[edge])


def test_a_sharded_ddp_optimizer_keeps_about_half_the_states_per_process():
    """train.shard_optimizer under DDP: each process keeps the states of the tensors it owns; weights, gradients and
    activations stay whole."""

    def peak(*overrides: str) -> MemoryEstimate:
        cfg = load_config(CONFIGS / "v2.yaml", ["model.name_or_path=tiny", "train.optimizer=adamw", *overrides])
        settings = MemorySettings.from_run(cfg, liger=True, processes=2)
        return estimate(shape_of("8b"), settings, Levers.from_run(cfg), Rows(13000, 1))

    whole, sharded = peak(), peak("train.shard_optimizer=true")
    states = "AdamW states (2 per parameter, the parameter's dtype)"
    assert sharded.persistent[states + " (1/2 per process)"] == pytest.approx(whole.persistent[states] / 2)
    assert whole.peak_bytes - sharded.peak_bytes == pytest.approx(whole.persistent[states] / 2)
