"""Applying a plan to a model: set ``requires_grad``, all-or-nothing."""

from __future__ import annotations

from typing import Any

import torch

from hf_freeze.names import unwrap_model
from hf_freeze.plan import Plan, plan
from hf_freeze.recipe import Recipe

_APPLIED_ATTR = "_hf_freeze_applied"


def apply_plan(model: torch.nn.Module, planned: Plan) -> Plan:
    """Set ``requires_grad`` on every tensor of ``model`` as ``planned`` decides; all-or-nothing.

    Frozen tensors also lose their ``.grad`` (a frozen tensor's gradient is ``None``, never zeros, so
    weight decay and momentum cannot move it).
    """
    tensors = planned.tensors()
    before = {name: (param.requires_grad, param.grad) for name, param in tensors.items()}
    try:
        for name, param in tensors.items():
            trainable = planned.decisions[name].trainable
            param.requires_grad_(trainable)
            if not trainable:
                param.grad = None
    except BaseException:
        for name, (flag, grad) in before.items():
            tensors[name].requires_grad_(flag)
            tensors[name].grad = grad
        raise
    setattr(unwrap_model(model), _APPLIED_ATTR, {"recipe": planned.recipe.to_dict(), "phase": planned.phase})
    return planned


def apply_recipe(model: torch.nn.Module, recipe: Recipe | dict[str, Any] | str, phase: int = 0) -> Plan:
    """Plan ``recipe`` on ``model`` and set ``requires_grad`` accordingly; returns the plan.

    Atomic: every error (``RecipeError``) is raised while planning, before any flag changes.
    """
    return apply_plan(model, plan(model, recipe, phase=phase))


def applied_recipe(model: torch.nn.Module) -> dict[str, Any] | None:
    """The resolved recipe (``Recipe.to_dict()``) and phase last applied to ``model``, or None."""
    return getattr(unwrap_model(model), _APPLIED_ATTR, None)
