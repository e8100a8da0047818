"""Per-rank memory of a training run: parameters, gradients and optimizer state, against the trainable-only limit.

What a rank really holds is counted by storage, each storage once, so views and sharing count as the memory
they are: an FSDP2 ``DTensor`` counts its local shard (padding included), an FSDP1 unit its flat parameter
and its flat gradient (with ``use_orig_params=True`` the original parameters are views into them; the flat
gradient covers the whole unit, frozen elements included), a tied weight once.

The limit is what the rank would hold if only trainable tensors had gradients and optimizer state: the bytes
of the trainable tensors it holds (its shards of them under FSDP1, FSDP2 and DeepSpeed ZeRO-3, all of them
otherwise) for gradients, times the optimizer's state tensors per parameter (AdamW: 2) for its state. A
gradient figure far above its limit means frozen parameters pay gradient memory (an FSDP1 unit mixing
trainable and frozen parameters); an optimizer-state figure above its limit means state for tensors that do
not train. Gradients are counted as they are at the call: after ``zero_grad(set_to_none=True)`` there are none.

``memory_report(model, optimizer)`` is one rank's line, ``memory_stats`` gives the figures (``memory_line``
turns them into the line), and
``MemoryReportCallback`` prints the line on every rank of a Trainer run once, when gradients and optimizer state
both exist (``scripts/train.py`` adds it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import TrainerCallback

from hf_freeze.fsdp1 import flat_units
from hf_freeze.plan import OPTIMIZER_STATE_COPIES
from hf_freeze.report import human_bytes
from hf_freeze.sharding import sharding_engine


def memory_stats(model: nn.Module, optimizer: Any | None = None) -> dict[str, Any]:
    """This rank's figures: ``parameter_bytes``, ``gradient_bytes``, ``optimizer_state_bytes``,
    ``trainable_bytes`` (whole tensors, all ranks together), the limits ``gradient_limit_bytes`` (the part of
    the trainable tensors this rank holds) and ``optimizer_state_limit_bytes``, ``engine`` (``fsdp1``,
    ``fsdp2``, ``deepspeed``, ``ddp`` or ``none``), ``rank`` and ``world_size``. A DeepSpeed
    engine is measured where ZeRO keeps its buffers (:func:`hf_freeze.deepspeed.memory_stats`)."""
    from hf_freeze import deepspeed  # imports DeepSpeed itself only for an engine

    if deepspeed.is_deepspeed_engine(model):
        return deepspeed.memory_stats(model)
    engine = sharding_engine(model) or ("ddp" if isinstance(model, nn.parallel.DistributedDataParallel) else "none")
    distributed = dist.is_available() and dist.is_initialized()
    world_size = dist.get_world_size() if distributed else 1
    units = list(flat_units(model))
    grads = [param.grad for param in model.parameters()] + [flat.grad for flat, _, _ in units]
    trainable, local = _trainable_bytes(model, units)
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps one
    copies = OPTIMIZER_STATE_COPIES.get(type(optimizer).__name__.lower(), 2) if optimizer is not None else 0
    return {
        "engine": engine,
        "rank": dist.get_rank() if distributed else 0,
        "world_size": world_size,
        "parameter_bytes": local_bytes(list(model.parameters()) + [flat for flat, _, _ in units]),
        "gradient_bytes": local_bytes(grads),
        "optimizer_state_bytes": local_bytes(_state_tensors(optimizer)),
        "trainable_bytes": trainable,
        "gradient_limit_bytes": local,
        "optimizer_state_limit_bytes": copies * local,
    }


def memory_report(model: nn.Module, optimizer: Any | None = None) -> str:
    """One line per rank: what it holds against the trainable-only limit (module docstring)."""
    return memory_line(memory_stats(model, optimizer))


def memory_line(stats: dict[str, Any]) -> str:
    """The line :func:`memory_report` prints, from figures already measured by :func:`memory_stats`."""

    def against(measured: str, limit: str) -> str:
        over = stats[measured] - stats[limit]
        verdict = "within it" if over <= 0 else f"{human_bytes(over)} over"
        return f"{human_bytes(stats[measured])} (trainable-only limit {human_bytes(stats[limit])}, {verdict})"

    return (
        f"memory on rank {stats['rank']} of {stats['world_size']} ({stats['engine']}): "
        f"parameters {human_bytes(stats['parameter_bytes'])}; "
        f"gradients {against('gradient_bytes', 'gradient_limit_bytes')}; "
        f"optimizer state {against('optimizer_state_bytes', 'optimizer_state_limit_bytes')}"
    )


class MemoryReportCallback(TrainerCallback):
    """Prints :func:`memory_report` on every rank once, just before the second optimizer step (after its
    backward, before ``zero_grad``; the first step has created the optimizer state). The line is kept in
    ``report``. Works under every engine the Trainer wraps with: it measures ``trainer.model_wrapped``."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.report: str | None = None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.report = memory_report(self.trainer.model_wrapped, self.trainer.optimizer)
            print(self.report, flush=True)


def local_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind ``tensors`` on this rank (a DTensor by its local shard)."""
    storages: dict[int, int] = {}
    for tensor in tensors:
        if tensor is None or tensor.is_meta:
            continue
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        storage = local.untyped_storage()
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(storages.values())


def _trainable_bytes(model: nn.Module, units: list[tuple[Any, list[str], bool]]) -> tuple[int, int]:
    """Bytes of the trainable tensors: whole (all ranks together) and the part this rank holds."""
    if units:  # FSDP1: the original parameters are slices of flat parameters
        whole = local = 0
        for flat, _, orig in units:
            count = len(flat._numels)
            flags = [param.requires_grad for param in flat._params] if orig else [flat.requires_grad] * count
            infos = flat._shard_param_infos
            size = flat.element_size()
            whole += size * sum(numel for numel, flag in zip(flat._numels, flags, strict=True) if flag)
            local += size * sum(info.numel_in_shard or 0 for info, flag in zip(infos, flags, strict=True) if flag)
        return whole, local
    whole = local = 0
    for param in dict.fromkeys(param for param in model.parameters() if param.requires_grad):
        size = param.element_size()
        whole += getattr(param, "ds_numel", param.numel()) * size
        held = param.to_local() if hasattr(param, "to_local") else getattr(param, "ds_tensor", param)
        local += held.numel() * size
    return whole, local


def _state_tensors(optimizer: Any | None) -> list[torch.Tensor]:
    """Every non-scalar tensor of the optimizer's per-parameter state."""
    if optimizer is None:
        return []
    return [value for state in optimizer.state.values() for value in state.values() if _is_state_tensor(value)]


def _is_state_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0
