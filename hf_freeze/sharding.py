"""Which sharding engine holds a model's parameters: FSDP2, FSDP1, DeepSpeed ZeRO-3, or none.

Lower layers need this one fact and nothing else of the engines: a sharded model's parameters cannot be read
whole on one rank (an FSDP2 parameter is a ``DTensor`` shard, an FSDP1 parameter is a slice of a flat
parameter, a ZeRO-3 parameter is an empty placeholder), so the base fingerprint falls back to the samples
recorded before sharding (:mod:`hf_freeze.fingerprint`) and a delta is gathered instead of copied
(:mod:`hf_freeze.fsdp`). Detection looks at the modules and parameters themselves, not at launcher settings,
so it is right whoever did the sharding (Accelerate, the Trainer, or the user's own ``fully_shard``).
"""

from __future__ import annotations

from typing import Literal

import torch

Engine = Literal["fsdp2", "fsdp1", "deepspeed"]


def sharding_engine(model: torch.nn.Module) -> Engine | None:
    """The engine that shards ``model``'s parameters, or None when every parameter is whole on this rank."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP1

    for module in model.modules():
        if isinstance(module, FSDPModule):
            return "fsdp2"
        if isinstance(module, FSDP1):
            return "fsdp1"
    if any(hasattr(param, "ds_id") for param in model.parameters()):
        return "deepspeed"
    return None


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether some parameter of ``model`` is not whole on this rank."""
    return sharding_engine(model) is not None
