"""Applying a plan to a model: set ``requires_grad``, all-or-nothing."""

from __future__ import annotations

from typing import Any

import torch

from hf_freeze.errors import RecipeError
from hf_freeze.names import named_tensors, unwrap_model
from hf_freeze.plan import Plan, plan
from hf_freeze.recipe import Recipe

_APPLIED_ATTR = "_hf_freeze_applied"


def apply_plan(model: torch.nn.Module, planned: Plan) -> Plan:
    """Set ``requires_grad`` on every tensor of ``model`` as ``planned`` decides; all-or-nothing.

    Frozen tensors also lose their ``.grad`` (a frozen tensor's gradient is ``None``, never zeros, so
    weight decay and momentum cannot move it). Tensors are found by canonical name, so a plan made before
    wrapping or sharding still sets the flags of the tensors ``model`` holds now; a plan of another model
    is a ``RecipeError``.
    """
    tensors = _tensors_by_decision(model, planned)
    before = [(param, param.requires_grad, param.grad) for param, _ in tensors]
    try:
        for param, trainable in tensors:
            param.requires_grad_(trainable)
            if not trainable:
                param.grad = None
    except BaseException:
        for param, flag, grad in before:
            param.requires_grad_(flag)
            param.grad = grad
        raise
    setattr(unwrap_model(model), _APPLIED_ATTR, {"recipe": planned.recipe.to_dict(), "phase": planned.phase})
    return planned


def _tensors_by_decision(model: torch.nn.Module, planned: Plan) -> list[tuple[torch.nn.Parameter, bool]]:
    """Each distinct tensor of ``model`` with the plan's decision for it; every decision must be used."""
    found: dict[int, tuple[torch.nn.Parameter, bool]] = {}
    used: set[str] = set()
    for name, param in named_tensors(model):
        try:
            decision = planned.decision(name)
        except KeyError:
            raise RecipeError(
                f"The plan was made for another model: {planned.model_class} has no tensor {name}; "
                "plan this model and apply that plan."
            ) from None
        used.add(decision.name)
        found.setdefault(id(param), (param, decision.trainable))
    missing = [name for name in planned.decisions if name not in used]
    if missing:
        raise RecipeError(
            f"The plan was made for another model: this one has no tensor {missing[0]}; "
            "plan this model and apply that plan."
        )
    return list(found.values())


def apply_recipe(model: torch.nn.Module, recipe: Recipe | dict[str, Any] | str, phase: int = 0) -> Plan:
    """Plan ``recipe`` on ``model`` and set ``requires_grad`` accordingly; returns the plan.

    Atomic: every error (``RecipeError``) is raised while planning, before any flag changes.
    """
    return apply_plan(model, plan(model, recipe, phase=phase))


def applied_recipe(model: torch.nn.Module) -> dict[str, Any] | None:
    """The resolved recipe (``Recipe.to_dict()``) and phase last applied to ``model``, or None."""
    return getattr(unwrap_model(model), _APPLIED_ATTR, None)
