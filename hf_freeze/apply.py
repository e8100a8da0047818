"""Applying a plan to a model: set ``requires_grad``, all-or-nothing."""

from __future__ import annotations

from typing import Any

import torch

from hf_freeze.names import unwrap_model

_APPLIED_ATTR = "_hf_freeze_applied"



def applied_recipe(model: torch.nn.Module) -> dict[str, Any] | None:
    """The resolved recipe (``Recipe.to_dict()``) and phase last applied to ``model``, or None."""
    return getattr(unwrap_model(model), _APPLIED_ATTR, None)
