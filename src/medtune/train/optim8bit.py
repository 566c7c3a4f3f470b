"""bitsandbytes' 8-bit AdamW, paged or not, with a lean step: the same kernels, states and checkpoints.

A step of Qwen3-8B v2 updates 506 tensors. bitsandbytes' `step` spends Python on each (a config dict, contiguity
re-assignments, a device check, a dispatch through torch's custom-op layer) and synchronises the device after each,
so the host cannot run ahead of the kernels: under cProfile its step took 0.140 s of a data-parallel share's 1.10 s,
torch's multi-tensor AdamW 0.015 s (bench/RESULTS.md, "Host time"). Here the per-group settings are read once and
each tensor costs one kernel launch; the device is synchronised once, after the last (bitsandbytes' paged states
need that one). Anything this path does not cover (a closure, per-parameter overrides, `max_unorm`, 32-bit states
of small tensors) takes bitsandbytes' own code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bitsandbytes as bnb
import torch
from bitsandbytes.utils import sync_gpu


class LeanStep:
    """Mixin over a bitsandbytes 2-state 8-bit optimizer: its `step`, one kernel launch per 8-bit tensor."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if closure is not None or self.mng.index2config or self.mng.pid2config or self.args.max_unorm > 0:
            return super().step(closure)  # type: ignore[misc]
        if not self.initialized:
            self.check_overrides()
            self.to_gpu()
            self.initialized = True
        update = torch.ops.bitsandbytes.optimizer_update_8bit_blockwise
        last = None
        for gindex, group in enumerate(self.param_groups):
            betas = group["betas"]
            beta1, beta2, beta3 = betas[0], betas[1], betas[2] if len(betas) >= 3 else 0.0
            alpha, eps, lr, decay = group.get("alpha", 0.0), group["eps"], group["lr"], group["weight_decay"]
            for pindex, p in enumerate(group["params"]):
                grad = p.grad
                if grad is None:
                    continue
                state = self.state[p]
                if not state:
                    self.init_state(group, p, gindex, pindex)
                last = p
                if self.is_paged:
                    self.prefetch_state(p)
                if state["state1"].dtype != torch.uint8:  # a small tensor's 32-bit states
                    self.update_step(group, p, gindex, pindex)
                    continue
                if not grad.is_contiguous():
                    grad = p.grad = grad.contiguous()
                state["step"] += 1
                update(
                    self.optimizer_name,
                    grad,
                    p.data if p.data.is_contiguous() else self._contiguous(p),
                    state["state1"],
                    state["state2"],
                    beta1,
                    beta2,
                    beta3,
                    alpha,
                    eps,
                    state["step"],
                    lr,
                    state["qmap1"],
                    state["qmap2"],
                    state["absmax1"],
                    state["absmax2"],
                    decay,
                    1.0,
                    self.args.skip_zeros,
                )
        if last is not None:
            sync_gpu(last)
        return None

    @staticmethod
    def _contiguous(p: torch.Tensor) -> torch.Tensor:
        p.data = p.data.contiguous()
        return p.data


class AdamW8bit(LeanStep, bnb.optim.AdamW8bit):
    """bitsandbytes.optim.AdamW8bit with the lean step."""


class PagedAdamW8bit(LeanStep, bnb.optim.PagedAdamW8bit):
    """bitsandbytes.optim.PagedAdamW8bit with the lean step."""
