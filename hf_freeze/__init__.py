"""hf_freeze: declarative freezing recipes, freeze-aware training and trainable-only delta checkpoints."""

from __future__ import annotations

from typing import Any

from hf_freeze.apply import applied_recipe, apply_plan, apply_recipe
from hf_freeze.errors import DeltaError, RecipeError
from hf_freeze.plan import Plan, plan
from hf_freeze.recipe import Recipe
from hf_freeze.version import __version__

_LAZY = {
    "FreezeTrainer": "hf_freeze.trainer",
    "save_delta": "hf_freeze.delta",
    "load_delta": "hf_freeze.delta",
    "load_model_with_delta": "hf_freeze.delta",
}

__all__ = [
    "DeltaError",
    "FreezeTrainer",
    "Plan",
    "Recipe",
    "RecipeError",
    "__version__",
    "applied_recipe",
    "apply_plan",
    "apply_recipe",
    "load_delta",
    "load_model_with_delta",
    "plan",
    "save_delta",
]


def __getattr__(name: str) -> Any:
    """Import the training and checkpoint layers only when they are used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_freeze' has no attribute {name!r}")
