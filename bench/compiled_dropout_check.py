"""Compiled decoder layers (gpu_speed.py's `compiled` modifier): are their gradients right, dropout included?

Under torch.compile, LoRA dropout draws its masks from inductor's generator, so a compiled run's losses differ from an
eager one's (bench/RESULTS.md, "Compiled decoder layers"). This tells other masks from wrong gradients: it prints,
for one v2 step of the tiny model after the same two steps before it, |difference| / |gradient| over the lora_B
tensors for
- compiled with and without activation checkpointing (0 if recomputation replays the forward pass's masks);
- eager against compiled without dropout (rounding only), and with dropout 0.1 (other masks);
- eager against eager with another seed (how far other masks move a gradient).
Runs on the CPU (a few minutes) or a GPU:
    PYTHONPATH=src python bench/compiled_dropout_check.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from medtune.config import load_config
from medtune.train.recipe import FineTuneRecipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SAMPLES = 2


def one_step_gradients(folder: Path, checkpointing: bool, compiled: bool, dropout: float, seed: int) -> dict:
    """The trained tensors' gradients of a step, after two steps that warm up (and, `compiled`, compile) the layers."""
    cfg = load_config(
        CONFIGS / "v2.yaml",
        [
            f"output_dir={folder}",
            f"run_name=ck{checkpointing}-co{compiled}-d{dropout}-s{seed}",
            f"lora.dropout={dropout}",
            f"train.gradient_checkpointing={str(checkpointing).lower()}",
            "speed.checkpoint_fraction=1.0",
            "speed.fused_kernels=none",  # Liger's RMSNorm does not compile (RESULTS.md): inductor's kernels instead
            "data.max_length=640",
            "train.per_device_batch_size=1",
            f"train.gradient_accumulation_steps={SAMPLES}",
        ],
        overlays=[CONFIGS / "tiny.yaml"],
    )
    recipe = FineTuneRecipe(cfg, overwrite=True)
    recipe.setup()
    samples = [recipe.train_set.encode_at(0, index)[0] for index in range(3 * SAMPLES)]
    torch.manual_seed(7)
    recipe.train_step(samples[:SAMPLES])  # eager: fills the 4-bit layers' cached block scales
    if compiled:
        for layer in recipe.model.get_base_model().model.layers:
            layer.compile(dynamic=True)
    recipe.train_step(samples[SAMPLES : 2 * SAMPLES])  # compiles, when compiled; the same two steps either way
    gradients: dict[str, torch.Tensor] = {}
    step = recipe.optimizer.step

    def keep_gradients(*args, **kwargs):
        gradients.update({n: p.grad.detach().clone() for n, p in recipe.model.named_parameters() if "lora_B" in n})
        return step(*args, **kwargs)

    recipe.optimizer.step = keep_gradients
    torch.manual_seed(seed)
    recipe.train_step(samples[2 * SAMPLES :])
    recipe.cleanup()
    return gradients


def relative_difference(a: dict, b: dict) -> float:
    difference = torch.cat([(a[k] - b[k]).flatten().float() for k in a]).norm()
    return float(difference / torch.cat([a[k].flatten().float() for k in a]).norm())


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:

        def grads(checkpointing: bool, compiled: bool, dropout: float = 0.1, seed: int = 1234) -> dict:
            return one_step_gradients(Path(folder), checkpointing, compiled, dropout, seed)

        eager = grads(False, False)
        compiled = grads(False, True)
        rows = [
            ("compiled, checkpointing against none (dropout 0.1)", grads(True, True), compiled),
            ("eager against compiled, dropout 0 (rounding only)", grads(False, False, 0.0), grads(False, True, 0.0)),
            ("eager against compiled, dropout 0.1", eager, compiled),
            ("eager against eager with another seed, dropout 0.1", eager, grads(False, False, seed=99)),
        ]
        for label, a, b in rows:
            print(f"{label}: |difference| / |gradient| over lora_B = {relative_difference(a, b):.2e}", flush=True)


if __name__ == "__main__":
    main()
