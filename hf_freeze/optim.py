"""Optimizer parameter groups from phase plans.

The optimizer is built once, over every tensor that trains in any phase: one group per (phase, decay /
no-decay), at ``lr * lr_scale`` of that phase. Tensors of later phases keep ``requires_grad=False`` and
``grad=None`` until their phase starts, so AdamW allocates no state for them and does not move them, while
the LR scheduler sees every group from the first step.
"""

from __future__ import annotations

from typing import Any

import transformers
from torch import nn

from hf_freeze.names import canonical_name
from hf_freeze.phases import first_trainable_phase
from hf_freeze.plan import Plan
from hf_freeze.recipe import Recipe


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Canonical names that get weight decay under the Trainer's rule (not biases, not norms)."""
    # The Trainer's rule does not depend on the Trainer instance; reuse it rather than restate it.
    return {canonical_name(name) for name in transformers.Trainer.get_decay_parameter_names(None, model)}


def param_groups(
    plans: list[Plan],
    recipe: Recipe,
    lr: float,
    weight_decay: float,
    decay_names: set[str] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim`` over every tensor that trains in any phase.

    ``decay_names`` are canonical names that get ``weight_decay`` (the Trainer's own rule: not biases, not
    norms); ``None`` decays everything. Each group carries ``hf_freeze_phase`` and ``hf_freeze_decay`` keys.
    Empty groups are left out.
    """
    first = first_trainable_phase(plans)
    groups = []
    for phase, planned in enumerate(plans):
        scale = recipe.phases[phase].lr_scale if recipe.phases else 1.0
        tensors = planned.tensors()
        names = [name for name in planned.decisions if first.get(name) == phase]
        for decay in (True, False):
            chosen = [name for name in names if (decay_names is None or name in decay_names) == decay]
            if chosen:
                groups.append(
                    {
                        "params": [tensors[name] for name in chosen],
                        "lr": lr * scale,
                        "weight_decay": weight_decay if decay else 0.0,
                        "hf_freeze_phase": phase,
                        "hf_freeze_decay": decay,
                    }
                )
    return groups


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes held in the optimizer's per-parameter state tensors (what AdamW really allocated)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if hasattr(value, "numel") and value.dim() > 0:
                total += value.numel() * value.element_size()
    return total
