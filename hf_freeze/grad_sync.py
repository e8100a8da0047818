"""Keep DDP ranks identical when tensors are unfrozen after the model was wrapped.

DDP registers only the parameters that required grad when it was built. A tensor unfrozen later gets local
gradients that DDP never averages: ranks drift apart, and gradient clipping (which reads every gradient)
spreads the drift to every other parameter. ``LateGradSync`` averages those gradients across ranks, in one
coalesced all-reduce, before clipping and the optimizer step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def world_size() -> int:
    """The number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class LateGradSync:
    """Averages, across ranks, the gradients of tensors that DDP did not register at wrap time."""

    def __init__(self, model: nn.Module):
        self.registered = {id(param) for param in model.parameters() if param.requires_grad}

    def late_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters that train now but were frozen when DDP was built."""
        return [param for param in model.parameters() if param.requires_grad and id(param) not in self.registered]

    @torch.no_grad()
    def sync(self, model: nn.Module) -> int:
        """All-reduce (average) late parameters' gradients; returns how many tensors were synchronised."""
        size = world_size()
        late = [param for param in self.late_parameters(model) if param.grad is not None]
        if size == 1 or not late:
            return 0
        grads = [param.grad for param in late]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat.div_(size)
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            grad.copy_(synced)
        return len(late)
