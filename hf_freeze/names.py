"""Canonical parameter and module names, and the bare model under wrappers.

A canonical name is the name a tensor has in the bare transformers model. Wrappers add prefixes or inner
components (DDP ``module.``, ``torch.compile`` ``_orig_mod.``, FSDP1 ``_fsdp_wrapped_module.``, activation
checkpointing ``_checkpoint_wrapped_module.``, PEFT ``base_model.model.`` and ``.base_layer``); removing them
lets one recipe and one delta work whether the model is wrapped or not.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

_LEADING_PREFIXES = ("module.", "base_model.model.")
_INNER_COMPONENTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "base_layer"})


def canonical_name(name: str) -> str:
    """Return ``name`` with every wrapper prefix and wrapper component removed."""
    changed = True
    while changed:
        changed = False
        for prefix in _LEADING_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                changed = True
        if name in ("module", "base_model.model"):
            return ""
    parts = [part for part in name.split(".") if part not in _INNER_COMPONENTS]
    return ".".join(parts)


def named_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """Yield ``(canonical name, parameter)`` for every parameter name, tied aliases included."""
    for name, param in model.named_parameters(remove_duplicate=False):
        yield canonical_name(name), param


def canonical_state_names(model: torch.nn.Module) -> dict[str, str]:
    """Map each canonical parameter name (aliases included) to the canonical name of its first alias."""
    first: dict[int, str] = {}
    mapping: dict[str, str] = {}
    for name, param in named_tensors(model):
        mapping[name] = first.setdefault(id(param), name)
    return mapping


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP, ``torch.compile``, FSDP1 and PEFT wrappers."""
    while True:
        if hasattr(model, "get_base_model") and callable(model.get_base_model):  # PEFT
            inner = model.get_base_model()
        elif hasattr(model, "_orig_mod"):  # torch.compile
            inner = model._orig_mod
        elif hasattr(model, "_fsdp_wrapped_module"):  # FSDP1
            inner = model._fsdp_wrapped_module
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            inner = model.module
        else:
            return model
        if inner is model:
            return model
        model = inner
