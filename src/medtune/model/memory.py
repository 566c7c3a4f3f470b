"""The peak GPU memory of a training step, predicted without loading weights.

Inputs: the model's config.json (sizes only), the run config (quantization, LoRA, trained embeddings, optimizer,
speed levers) and the token lengths of the prepared data, from which the longest packed row of the run is worked
out exactly as training will pack it. The prediction is `torch.cuda.max_memory_allocated` of a step on CUDA with
the defaults' kernels (varlen flash attention, bf16 autocast, Liger's norms and SwiGLU where installed).

A step's memory is three parts:
- persistent: weights, adapters, trained copies of the embeddings, gradients, optimizer states;
- held: what the forward pass keeps for the backward pass, per decoder layer and token (`kept_layer_bytes_per_token`
  for a layer that keeps its activations, its input alone for a recomputed one);
- transient: the largest short-lived working set on top of the held part, whichever of the three phases is larger:
  the chunked lm_head + cross-entropy in the forward pass, the start of the backward pass where a trained head's
  gradient is scaled, and one layer's backward pass (recomputed, if checkpointed).
A fourth part, the step's edges, holds what runs while no activations are held: under FSDP, a sharded input
embedding gathered whole for its backward pass at the end of the step.
The per-token byte counts follow from what each kernel saves (listed in the functions below); three constants are
calibrated against the peaks measured in bench/RESULTS.md and bench/results/ (tests/model/test_memory.py holds the
table). They were measured with paged 8-bit AdamW, whose states live in managed memory and are not counted.

Under FSDP (train.parallelism fsdp, several processes; train/fsdp.py) the estimate is one process's: every parameter
FSDP shards (the decoder layers' 4-bit storage and LoRA adapters, PEFT's frozen originals of trained modules, trained
embed_tokens and lm_head copies), its gradient and its optimizer states take 1/processes; the 4-bit absmax
(bitsandbytes' quantization state, kept whole on each layer), frozen embeddings that are not trained and the final
norm stay whole.
On top: the decoder layers gathered whole around the one running, every process's hidden states gathered by the loss
of a trained lm_head split by rows (with its rows' fp32 gradient accumulator), and a trained input embedding gathered
whole for its backward. The activations are those of the process's own rows, as under DDP.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from medtune.config import ModelConfig, RunConfig

GIB = 2**30
NF4_BLOCK = 64  # weights per 4-bit block, each with an absmax scale
NESTED_BLOCK = 256  # absmax values per block of the double quantization (fp32 scale each)
BF16 = 2
FP32 = 4

# A chunk's bf16 and fp32 logits, then its fp32 probabilities and bf16 logit gradient: 6 bytes per logit (the loss
# frees each chunk's before the next one's exist; before it did, 12 bytes were measured).
HEAD_CHUNK_BYTES_PER_LOGIT = 6
# Calibrated: per trained token and hidden feature, the selected hidden states, their gradient and their bf16 casts.
HEAD_BYTES_PER_TOKEN_FEATURE = 9
# Calibrated: PEFT's own LoRA forward keeps about one byte per input feature of each adapted projection more than the
# fused one (its dropped-out input copy, net of what the fused function keeps instead): measured 0.9-1.0.
PEFT_EXTRA_BYTES_PER_INPUT_FEATURE = 1
# A trained head's fp32 gradient accumulator, saved by the fused loss and scaled in place in the backward pass: 4 bytes
# per head weight, besides the bf16 gradient itself (persistent). Before the in-place scaling, 8 were measured.
HEAD_ACCUMULATOR_BYTES_PER_WEIGHT = 4
# Layer inputs on the device while activations are offloaded: the one in use, and the copies in flight or prefetched.
OFFLOAD_LAYERS_ON_DEVICE = 3
NF4_DATA_BYTES_PER_WEIGHT = 0.5  # the packed 4-bit values, uint8 or (under FSDP) bf16 storage alike
# Under FSDP, decoder layers gathered whole at once: the one running and the one prefetched (reshard after forward).
FSDP_GATHERED_LAYERS = 2


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Qwen3-style decoder that decide its training memory (from config.json)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            return cls(
                hidden=hidden,
                layers=int(config["num_hidden_layers"]),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                intermediate=int(config["intermediate_size"]),
                vocab=int(config["vocab_size"]),
                tied=bool(config.get("tie_word_embeddings", False)),
            )
        except KeyError as missing:
            raise ValueError(
                f"config.json has no {missing.args[0]}: the memory model needs a decoder's sizes"
            ) from None

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear projection of a decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (self.hidden, q),
            "k_proj": (self.hidden, kv),
            "v_proj": (self.hidden, kv),
            "o_proj": (q, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }

    def linear_weights(self) -> int:
        return self.layers * sum(i * o for i, o in self.projections().values())

    def embedding_weights(self) -> int:
        """One vocab x hidden matrix (embed_tokens, or lm_head)."""
        return self.vocab * self.hidden


def read_model_shape(model: ModelConfig) -> ModelShape:
    """The decoder's sizes from its config.json alone: a local folder, the tiny model, a hub or ModelScope id
    (only config.json is fetched), or a GGUF file's header."""
    from transformers import AutoConfig

    from medtune.hub import resolve_model_source
    from medtune.model.load import model_source

    if model.gguf_file:  # model_source would de-quantise the whole file; the header holds the sizes
        source, extra = resolve_model_source(model.name_or_path, model.revision), {"gguf_file": model.gguf_file}
    else:
        source, extra = model_source(model), {}
    config = AutoConfig.from_pretrained(
        source, revision=model.revision, trust_remote_code=model.trust_remote_code, **extra
    )
    return ModelShape.from_config(config.get_text_config().to_dict())


@dataclass(frozen=True)
class MemorySettings:
    """What decides training memory besides the model's sizes and the planner's levers."""

    quant: str  # nf4, fp4 or none
    double_quant: bool
    lora_r: int
    lora_targets: tuple[str, ...]
    lora_dropout: float
    trained_embeddings: frozenset[str]  # of embed_tokens, lm_head
    untie: bool  # tied_embeddings: untie
    optimizer: str  # resolved: paged_adamw_8bit, adamw_8bit or adamw
    fused_lora: bool
    liger: bool
    gradient_checkpointing: bool
    packing: bool
    processes: int  # data-parallel processes (DDP or FSDP)
    fsdp: bool = False  # train.parallelism fsdp with several processes: sharded weights (train/fsdp.py)
    shard_optimizer: bool = False  # DDP with train.shard_optimizer: each process keeps its own tensors' states

    @classmethod
    def from_run(cls, cfg: RunConfig, liger: bool, processes: int = 1, fsdp: bool = False) -> MemorySettings:
        """The settings of `cfg` on CUDA (the optimizer resolved as there) in each of `processes` processes; `fsdp`
        counts only with several (one process holds the whole model whatever train.parallelism says)."""
        fsdp = fsdp and processes > 1
        return cls(
            quant=cfg.quant.mode,
            double_quant=cfg.quant.double_quant,
            lora_r=cfg.lora.r,
            lora_targets=tuple(cfg.lora.target_modules),
            lora_dropout=cfg.lora.dropout,
            trained_embeddings=frozenset(cfg.lora.modules_to_save) & {"embed_tokens", "lm_head"},
            untie=cfg.lora.tied_embeddings == "untie",
            optimizer=cfg.train.resolved_optimizer("cuda"),
            fused_lora=cfg.speed.fused_lora,
            liger=liger and cfg.speed.fused_kernels != "none",
            gradient_checkpointing=cfg.train.gradient_checkpointing,
            packing=cfg.train.packing,
            processes=processes,
            fsdp=fsdp,
            shard_optimizer=cfg.train.shard_optimizer and processes > 1 and not fsdp,
        )

    @property
    def shards(self) -> int:
        """Into how many parts FSDP cuts each sharded parameter, its gradient and its optimizer states (1: none)."""
        return self.processes if self.fsdp else 1

    @property
    def optimizer_shards(self) -> int:
        """Among how many processes the optimizer states are split: FSDP's shards, or DDP's owners of whole tensors
        (balanced by size, so about 1/processes each)."""
        return self.processes if self.fsdp or self.shard_optimizer else 1


@dataclass(frozen=True)
class Levers:
    """The settings the planner may change, each with a memory effect the model prices."""

    checkpoint_fraction: float
    row_tokens: int  # packed-row capacity (speed.packed_row_tokens, resolved)
    offload_activations: bool
    loss_chunk_tokens: int
    expandable_segments: bool = False  # allocator setting: changes reserved memory, not allocated

    @classmethod
    def from_run(cls, cfg: RunConfig) -> Levers:
        return cls(
            checkpoint_fraction=cfg.speed.checkpoint_fraction,
            row_tokens=cfg.row_tokens(),
            offload_activations=cfg.speed.offload_activations is True,
            loss_chunk_tokens=cfg.train.loss_chunk_tokens,
        )

    def checkpointed_layers(self, shape: ModelShape, settings: MemorySettings) -> int:
        """As `apply_speed` rounds it."""
        return round(self.checkpoint_fraction * shape.layers) if settings.gradient_checkpointing else 0


@dataclass(frozen=True)
class Rows:
    """The forward passes of a run's steps with one packed-row capacity: the longest row, and the most rows in a
    step."""

    longest: int
    most_per_step: int


@dataclass
class MemoryEstimate:
    """Predicted peak allocated bytes and the named terms it is the sum of: persistent + held + the largest phase,
    or persistent + the largest edge where that is more."""

    persistent: dict[str, float]
    held: dict[str, float]
    phases: dict[str, float]  # transient working sets on top of the held activations; the largest one counts
    edges: dict[str, float] = field(default_factory=dict)  # transient working sets while no activations are held
    notes: list[str] = field(default_factory=list)

    @property
    def peak_phase(self) -> str:
        """The phase or edge at the peak."""
        during = {name: sum(self.held.values()) + value for name, value in self.phases.items()}
        candidates = {**during, **self.edges}
        return max(candidates, key=candidates.__getitem__)

    @property
    def peak_bytes(self) -> float:
        return sum(self.terms().values())

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    def terms(self) -> dict[str, float]:
        """Every term that makes up the peak, in bytes, largest first."""
        peak = self.peak_phase
        transient = {peak: self.edges[peak]} if peak in self.edges else {**self.held, peak: self.phases[peak]}
        terms = {**self.persistent, **transient}
        return dict(sorted(((name, value) for name, value in terms.items() if value > 0), key=lambda kv: -kv[1]))

    def biggest_terms(self, count: int = 4) -> str:
        return ", ".join(f"{name} {value / GIB:.1f} GiB" for name, value in list(self.terms().items())[:count])


def nf4_bytes_per_weight(double_quant: bool) -> float:
    """4 bits, plus the absmax."""
    return NF4_DATA_BYTES_PER_WEIGHT + nf4_absmax_bytes_per_weight(double_quant)


def nf4_absmax_bytes_per_weight(double_quant: bool) -> float:
    """One absmax per 64 weights: fp32, or with double quant 8-bit with an fp32 scale per 256 blocks."""
    absmax = (1 + FP32 / NESTED_BLOCK) if double_quant else FP32
    return absmax / NF4_BLOCK


def kept_layer_bytes_per_token(shape: ModelShape, settings: MemorySettings) -> int:
    """Bytes a decoder layer that keeps its activations saves per token for the backward pass (bf16 activations).

    With Liger and fused LoRA: both RMSNorms' inputs (2 x 2h), the q/k/v input (2h, shared), the q/k norms' inputs
    (2q + 2kv), flash attention's q, k, v and output (2q + 4kv) and o_proj's own copy of that output (2q), the MLP
    input (2h), SwiGLU's gate and up (4i) and down_proj's input (2i); per adapted projection the rank-r product (2r)
    and, with dropout, its mask (1 byte per input feature). Checked against bench/saved_activations.py and the
    measured 1.10 GiB per kept Qwen3-1.7B layer in a 12,902-token row.
    """
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    total = BF16 * (4 * h + 4 * q + 3 * kv + 3 * i)
    adapted = [inputs for name, (inputs, _) in shape.projections().items() if name in settings.lora_targets]
    total += BF16 * settings.lora_r * len(adapted)
    if settings.lora_dropout > 0:
        total += sum(adapted)
    if not settings.fused_lora:
        total += PEFT_EXTRA_BYTES_PER_INPUT_FEATURE * sum(adapted)
    if not settings.liger:  # transformers' RMSNorm keeps an fp32 copy of its input; its SwiGLU keeps silu(gate) too
        total += BF16 * (2 * h + q + kv + i)
    return total


def estimate(shape: ModelShape, settings: MemorySettings, levers: Levers, rows: Rows) -> MemoryEstimate:
    """Peak allocated memory of one training step in one process (see the module docstring for the parts)."""
    tokens = rows.longest
    notes = []
    shards = settings.shards
    per_process = f" (1/{shards} per process)" if shards > 1 else ""
    quantized = settings.quant != "none"
    linear = shape.linear_weights()
    embedding = shape.embedding_weights()
    trained = settings.trained_embeddings
    trained_copies = 0 if not trained else (1 if shape.tied and not settings.untie else len(trained))
    frozen_matrices = 1 if shape.tied else 2
    trained_originals = min(frozen_matrices, len(trained))  # PEFT's frozen originals of trained modules
    # FSDP shards the trained originals (one unit, never gathered); the other frozen embeddings stay whole
    frozen_embeddings = (frozen_matrices - trained_originals + trained_originals / shards) * embedding * BF16
    adapted = {name: size for name, size in shape.projections().items() if name in settings.lora_targets}
    lora_per_layer = settings.lora_r * sum(i + o for i, o in adapted.values())
    lora_params = shape.layers * lora_per_layer
    head_trained = "lm_head" in trained
    trained_params = lora_params + trained_copies * embedding

    stored = (
        (f" (4-bit NF4, 1/{shards} per process; absmax whole)" if shards > 1 else " (4-bit NF4 with absmax)")
        if quantized
        else f" (bf16){per_process}"
    )
    persistent = {
        "base weights" + stored: (
            linear * (NF4_DATA_BYTES_PER_WEIGHT / shards + nf4_absmax_bytes_per_weight(settings.double_quant))
            if quantized
            else linear * BF16 / shards
        ),
        "embed_tokens / lm_head (bf16, frozen)"
        + (f"; trained ones' originals 1/{shards} per process" if shards > 1 and trained_originals else ""): (
            frozen_embeddings
        ),
        # under FSDP the fused LoRA expands the block scales on every call instead (model/lora_fused.py)
        "fused LoRA's cached block scales": (
            linear * FP32 / NF4_BLOCK if quantized and settings.fused_lora and not settings.fsdp else 0
        ),
        "LoRA adapters (fp32) and their gradients" + per_process: lora_params * FP32 * 2 / shards,
        "trained embed_tokens / lm_head copies (bf16)" + per_process: trained_copies * embedding * BF16 / shards,
        "lm_head gradient (bf16)" + per_process: embedding * BF16 / shards if head_trained else 0,
    }
    own_embedding_gradient = "embed_tokens" in trained and not (head_trained and trained_copies == 1)
    if own_embedding_gradient and settings.processes > 1 and not settings.fsdp:
        persistent["embed_tokens gradient (DDP bucket)"] = embedding * BF16  # DDP's buckets hold every gradient always
    elif own_embedding_gradient and rows.most_per_step > 1:  # made at the end of a pass, kept for the next ones
        persistent[f"embed_tokens gradient (bf16){per_process}, from a step's first pass on"] = (
            embedding * BF16 / shards
        )
    state_shards = settings.optimizer_shards
    per_process_states = f" (1/{state_shards} per process)" if state_shards > 1 else ""
    if settings.optimizer == "adamw":
        persistent["AdamW states (2 per parameter, the parameter's dtype)" + per_process_states] = (
            2 * (lora_params * FP32 + trained_copies * embedding * BF16) / state_shards
        )
    elif settings.optimizer == "adamw_8bit":
        persistent["8-bit AdamW states"] = 2 * trained_params / state_shards
    else:
        notes.append(
            f"paged 8-bit AdamW: {2 * trained_params / state_shards / GIB:.2f} GiB of states{per_process_states} in "
            "managed memory, paged to the host under pressure (not counted)"
        )

    checkpointed = levers.checkpointed_layers(shape, settings)
    kept = shape.layers - checkpointed
    layer_input = BF16 * shape.hidden * tokens
    per_kept_layer = kept_layer_bytes_per_token(shape, settings) * tokens
    if levers.offload_activations:
        on_device = min(shape.layers, OFFLOAD_LAYERS_ON_DEVICE)
        held = {
            f"activations on the device while offloading ({on_device} layers' worth)": min(kept, on_device)
            * per_kept_layer
            + min(checkpointed, on_device) * layer_input
        }
    else:
        held = {
            f"activations of {kept} kept layers": kept * per_kept_layer,
            f"inputs of {checkpointed} recomputed layers": checkpointed * layer_input,
        }
    held["final hidden states"] = 2 * layer_input

    trained_tokens = HEAD_BYTES_PER_TOKEN_FEATURE * shape.hidden * tokens
    chunk = min(levers.loss_chunk_tokens, tokens)
    # FSDP: a trained, untied lm_head is split by rows and never gathered; the loss gathers every process's hidden
    # states (about this process's count each) and computes its rows' logits for all of them, in the forward pass for
    # the loss and again in the backward pass for the gradients, with an fp32 accumulator of its rows only.
    vocab_split = settings.fsdp and head_trained and trained_copies == 2
    chunk_logits = HEAD_CHUNK_BYTES_PER_LOGIT * chunk * shape.vocab / (shards if vocab_split else 1)
    everyones_hidden = BF16 * shape.hidden * tokens * shards if vocab_split else 0
    layer_backward = "one layer's backward pass"
    gathered_layers = 0.0
    if settings.fsdp:  # the layers gathered whole (4-bit storage or bf16, and LoRA), and one layer's whole LoRA grads
        layer_storage = linear / shape.layers * (NF4_DATA_BYTES_PER_WEIGHT if quantized else BF16)
        gathered_layers = FSDP_GATHERED_LAYERS * (layer_storage + lora_per_layer * FP32) + lora_per_layer * FP32
        layer_backward += f", {FSDP_GATHERED_LAYERS} decoder layers gathered whole"
    phases = {
        f"lm_head + cross-entropy chunks of {chunk:,} tokens"
        + (", every process's hidden states" if vocab_split else ""): chunk_logits + trained_tokens + everyones_hidden,
        layer_backward: per_kept_layer + gathered_layers,
    }
    if vocab_split:
        phases["lm_head rows' gradient accumulator (fp32), every process's hidden states and their gradient (fp32)"] = (
            HEAD_ACCUMULATOR_BYTES_PER_WEIGHT * embedding / shards
            + everyones_hidden  # saved for the backward pass
            + FP32 * shape.hidden * tokens * shards  # their gradient, summed over the processes
            + chunk_logits
            + trained_tokens
        )
    elif head_trained:
        # .grad exists (accumulated over passes, DDP's bucket) before the accumulator is scaled into it
        whole_gradient = rows.most_per_step > 1 or settings.processes > 1
        phases["lm_head gradient accumulator (fp32)"] = (
            HEAD_ACCUMULATOR_BYTES_PER_WEIGHT * embedding + (embedding * BF16 if whole_gradient else 0) + trained_tokens
        )
    edges = {}
    if settings.fsdp and own_embedding_gradient:
        edges["embed_tokens gathered whole for its backward pass, with its whole gradient (bf16)"] = (
            2 * embedding * BF16
        )
    return MemoryEstimate(persistent, held, phases, edges, notes)


# ---- the run's packed rows ------------------------------------------------------------------------
def step_lengths(lengths: list[int], samples_per_step: int, steps: range, seed: int) -> Iterator[list[int]]:
    """The token lengths of each optimizer step's samples, in training's sample order (`batching.step_positions`)."""
    from medtune.data.batching import epoch_order

    n, order, epoch = len(lengths), [], -1
    for step in steps:
        batch = []
        for position in range(step * samples_per_step, (step + 1) * samples_per_step):
            if position // n != epoch:
                epoch = position // n
                order = epoch_order(n, seed, epoch)
            batch.append(lengths[order[position % n]])
        yield batch


def packed_rows(
    lengths: list[int],
    samples_per_step: int,
    steps: range,
    seed: int,
    capacity: int | None,
    batch_size: int,
    processes: int = 1,
) -> Rows:
    """The longest forward pass of `steps` (tokens) and the most passes in one step, for one process's share.

    With `capacity` (packing), rows are packed as training packs them; without, padded batches of `batch_size`.
    """
    from medtune.data.batching import pack_rows, process_shares

    longest = most = 0
    for lengths_of_step in step_lengths(lengths, samples_per_step, steps, seed):
        for indices in process_shares(lengths_of_step, processes):  # each process's share, as DistContext.shard
            share = [lengths_of_step[i] for i in indices]
            if not share:
                continue
            if capacity is not None:
                rows = [sum(map(len, row)) for row in pack_rows([range(length) for length in share], capacity)]
            else:
                rows = [
                    batch_size * max(share[start : start + batch_size]) for start in range(0, len(share), batch_size)
                ]
            longest, most = max(longest, *rows), max(most, len(rows))
    return Rows(longest, most)


@cache
def liger_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None
