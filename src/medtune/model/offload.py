"""Activation offloading: tensors saved for the backward pass go to pinned host memory and come back when needed.

Modelled on torchtune's `OffloadActivations` (torchtune/training/_activation_offloading.py, BSD licence), which
is not used directly: importing torchtune needs torchao, torchdata and more. The mechanism is the same:
`torch.autograd.graph.saved_tensors_hooks` whose pack hook copies a tensor to pinned host memory on a side CUDA
stream (the compute stream runs on) and whose unpack hook copies it back, prefetching the next tensors the
backward pass will ask for so the copies overlap with compute. Under non-reentrant activation checkpointing, a
checkpointed layer saves only its inputs through these hooks (its own tensors are recomputed), so with every layer
recomputed only the layers' inputs travel: 2 bytes x hidden size per token and layer.

Values are copied, never converted: the backward pass sees bit-identical tensors. On a CPU the pack hook keeps a
copy of the tensor (no pinned memory without CUDA), so tests take the same bookkeeping path.
"""

from __future__ import annotations

import functools
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MIN_OFFLOAD_BYTES = 2**20  # smaller tensors cost more in launches than they free
COPIES_IN_FLIGHT = 2  # device->host copies the compute stream may run ahead of; bounds the memory they pin
PREFETCH = 2  # host->device copies started ahead of the backward pass's request


@dataclass
class _Offloaded:
    """A saved tensor's host copy; `device_copy` is set while it is being (or has been) brought back."""

    index: int
    host: torch.Tensor
    device: torch.device
    source: weakref.ref[torch.Tensor]  # the tensor it copies, while alive: a later save of it is the same copy
    device_copy: torch.Tensor | None = None
    ready: torch.cuda.Event | None = None


class ActivationOffload(torch.autograd.graph.saved_tensors_hooks):
    """Context manager: inside it, saved tensors of at least `min_bytes` live on the host until the backward pass.

    One instance per forward pass. A tensor saved several times (q, k and v share their input) is copied once.
    """

    def __init__(self, min_bytes: int = MIN_OFFLOAD_BYTES) -> None:
        self.min_bytes = min_bytes
        self.saved: list[_Offloaded] = []
        self.by_key: dict[tuple[int, int], _Offloaded] = {}
        self.pending: deque[torch.cuda.Event] = deque()
        self.stream: torch.cuda.Stream | None = None
        super().__init__(self.pack, self.unpack)

    def worth_offloading(self, tensor: torch.Tensor) -> bool:
        """Activations only: not parameters (they stay where they are), not small tensors, not other devices' kinds."""
        return (
            tensor.device.type in ("cuda", "cpu")
            and not isinstance(tensor, nn.Parameter)
            and not (tensor.is_leaf and tensor.requires_grad)
            and type(tensor) is torch.Tensor
            and tensor.numel() * tensor.element_size() >= self.min_bytes
        )

    def pack(self, tensor: torch.Tensor) -> torch.Tensor | _Offloaded:
        if not self.worth_offloading(tensor):
            return tensor
        # The same live tensor object at the same version: an address is no key, since a freed activation's memory
        # goes to the next one of its shape (every checkpointed layer's input), which must not get the old copy.
        key = (id(tensor), tensor._version)
        known = self.by_key.get(key)
        if known is not None and known.source() is tensor:
            return known
        if tensor.is_cuda:
            host = self._copy_to_host(tensor)
        else:
            host = tensor.detach().clone(memory_format=torch.preserve_format)
        saved = _Offloaded(len(self.saved), host, tensor.device, weakref.ref(tensor))
        self.saved.append(saved)
        self.by_key[key] = saved
        return saved

    def _copy_to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """Asynchronous copy on the side stream; `record_stream` keeps the device memory from reuse until it is done."""
        compute = torch.cuda.current_stream(tensor.device)
        if self.stream is None:
            self.stream = torch.cuda.Stream(tensor.device)
        while len(self.pending) >= COPIES_IN_FLIGHT:  # the device waits, not the host: bounds memory held by copies
            compute.wait_event(self.pending.popleft())
        host = torch.empty_like(tensor, device="cpu", pin_memory=True)
        self.stream.wait_stream(compute)
        with torch.cuda.stream(self.stream):
            host.copy_(tensor.detach(), non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        tensor.record_stream(self.stream)
        self.pending.append(done)
        return host

    def unpack(self, packed: torch.Tensor | _Offloaded) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        if packed.device.type != "cuda":
            return packed.host
        for ahead in range(packed.index, max(-1, packed.index - PREFETCH - 1), -1):  # the backward pass runs in reverse
            self._bring_back(self.saved[ahead])
        torch.cuda.current_stream(packed.device).wait_event(packed.ready)
        tensor, packed.device_copy = packed.device_copy, None  # the graph owns it now; another unpack copies again
        return tensor

    def _bring_back(self, saved: _Offloaded) -> None:
        if saved.device_copy is not None:  # already on its way (prefetched)
            return
        compute = torch.cuda.current_stream(saved.device)
        device_copy = torch.empty_like(saved.host, device=saved.device)  # allocated on the compute stream
        self.stream.wait_stream(compute)
        with torch.cuda.stream(self.stream):
            device_copy.copy_(saved.host, non_blocking=True)
            saved.ready = torch.cuda.Event()
            saved.ready.record(self.stream)
        device_copy.record_stream(self.stream)
        saved.device_copy = device_copy


def offloading(forward: Callable[..., Any], min_bytes: int = MIN_OFFLOAD_BYTES) -> Callable[..., Any]:
    """`forward` with its saved tensors offloaded: a fresh `ActivationOffload` per call (nothing is kept across
    steps)."""

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # evaluation saves nothing
            return forward(*args, **kwargs)
        with ActivationOffload(min_bytes):
            return forward(*args, **kwargs)

    return run


def install_activation_offload(backbone: nn.Module) -> None:
    """Offload what the decoder stack saves; the loss (which needs its saved gradients at once) stays on the device."""
    backbone.forward = offloading(backbone.forward)
