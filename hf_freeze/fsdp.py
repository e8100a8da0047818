"""Sharded training under a recipe: FSDP2 (``fully_shard``), phases on any FSDP, and deltas of sharded models.

A run, in order: apply the recipe to the whole model (flags first: FSDP reads them when it wraps), record the
base samples (:func:`hf_freeze.fingerprint.record_base_samples`: after sharding no rank holds a frozen tensor
whole), shard (:func:`shard_model`, or Accelerate), build the optimizer over the sharded parameters
(:func:`optimizer_groups`; Accelerate's FSDP2 ``prepare`` also switches an optimizer built before sharding),
train, and advance phases with :func:`apply_phase`.

What FSDP2 does with ``requires_grad`` (torch 2.13, measured on CPU with gloo, tests/test_fsdp2.py):

- ``fully_shard`` replaces each parameter by a new ``DTensor`` parameter holding this rank's shard, and at
  every all-gather copies that parameter's flag onto the unsharded one (``FSDPParam.to_unsharded``). So a
  phase that unfreezes after sharding only sets the flags of the registered (sharded) parameters, which
  ``apply_plan`` finds by canonical name; the gradients are then reduce-scattered like any other.
- Not refreshed: each unit's mixed-precision dtypes, computed at its first forward from the parameters that
  required grad then. A unit wholly frozen at that moment gets none, and with
  ``MixedPrecisionPolicy(param_dtype=torch.bfloat16)`` its first backward after an unfreeze fails with
  "attempting to assign a gradient with dtype BFloat16 to a tensor with grad_dtype Float". :func:`apply_phase`
  recomputes them (FSDP's own ``_init_mp_dtypes``) after setting the flags.
- ``fully_shard`` does not free the old parameters: plans made before sharding hold them
  (``Plan.tensors()``) and would keep a whole copy of the model alive on every rank. Build the optimizer from
  them (:func:`optimizer_groups` swaps in the sharded parameters by name), then :func:`release_tensors`.

Deltas: :func:`gather_trainable` calls ``get_model_state_dict(..., full_state_dict=True, cpu_offload=True,
ignore_frozen_params=True)`` on every rank (a collective); only what trains travels, into rank 0's memory
(FSDP1 with CPU parameters cannot gather to rank 0 only: :func:`cpu_offload_works`).
Rank 0 chooses the delta's tensors by the names recorded before sharding
(:func:`hf_freeze.delta.sharded_delta_names`) and writes; the base fingerprint comes from the recorded samples,
so a delta saved sharded equals one saved unsharded and verifies against a fresh base. Whatever fails on rank 0
is re-raised on every rank (:func:`on_rank0`), so no rank waits forever. :func:`load_sharded_delta` reads and
verifies on rank 0, then ``set_model_state_dict(..., broadcast_from_rank0=True)`` scatters the tensors. FSDP1
with flat parameters fails that broadcast ("size mismatch ... copying a param with shape [local flat size]"):
there rank 0 broadcasts the delta's tensors (only what trained) and every rank loads them under FSDP1's
``FULL_STATE_DICT`` ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from hf_freeze.apply import apply_plan
from hf_freeze.delta import load_delta, read_delta, save_delta, sharded_delta_names
from hf_freeze.errors import DeltaError, RecipeError
from hf_freeze.fingerprint import base_samples, record_base_samples
from hf_freeze.fsdp1 import apply_plan_to_units, flat_param_groups, flat_units, uses_flat_parameters
from hf_freeze.names import canonical_name, named_tensors
from hf_freeze.optim import param_groups
from hf_freeze.phases import PhaseController
from hf_freeze.plan import Plan
from hf_freeze.recipe import Recipe
from hf_freeze.selectors import Anatomy
from hf_freeze.sharding import sharding_engine

T = TypeVar("T")


def shard_model(model: nn.Module, *, blocks: bool = True, **fully_shard_kwargs: Any) -> nn.Module:
    """Record the base samples, then ``fully_shard`` each block of the model's main stacks and the root.

    Apply the recipe first. ``fully_shard_kwargs`` go to every ``fully_shard`` call (``mesh``,
    ``mp_policy``, ``reshard_after_forward`` ...). Returns ``model`` (sharded in place).
    """
    from torch.distributed.fsdp import fully_shard

    record_base_samples(model)
    if blocks:
        for stack in Anatomy(model).all_stacks():
            for block in stack:
                fully_shard(block, **fully_shard_kwargs)
    fully_shard(model, **fully_shard_kwargs)
    return model


def apply_phase(model: nn.Module, planned: Plan) -> Plan:
    """Set the flags of ``planned`` on a model sharded by any engine (or none); returns the plan.

    FSDP1: on the units' flat parameters too (:func:`hf_freeze.fsdp1.apply_plan_to_units`). FSDP2: on the
    sharded parameters, then every unit's gradient dtypes are recomputed (module docstring).
    """
    engine = sharding_engine(model)
    if engine == "fsdp1":
        return apply_plan_to_units(model, planned)
    apply_plan(model, planned)
    if engine == "fsdp2":
        refresh_unit_dtypes(model)
    return planned


def is_fsdp(model: nn.Module) -> bool:
    """Whether FSDP1 or FSDP2 shards ``model``."""
    return sharding_engine(model) in ("fsdp1", "fsdp2")


def adopt_sharded_model(phases: PhaseController, model: nn.Module) -> None:
    """Once FSDP has wrapped ``model``: ``phases`` sets flags on it through :func:`apply_phase`, and its plans
    drop the whole tensors from before sharding (:func:`release_tensors`). Idempotent; nothing if not FSDP."""
    if is_fsdp(model) and phases.apply is not apply_phase:
        phases.model = model
        phases.apply = apply_phase
        phases.plans = release_tensors(phases.plans)


def refresh_unit_dtypes(model: nn.Module) -> None:
    """Recompute each FSDP2 unit's mixed-precision dtypes from the parameters that require grad now."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            group = module._get_fsdp_state()._fsdp_param_group
            if group is not None:
                group._init_mp_dtypes()


def optimizer_groups(
    model: nn.Module,
    plans: list[Plan],
    recipe: Recipe,
    lr: float,
    weight_decay: float,
    decay_names: set[str] | None = None,
) -> list[dict[str, Any]]:
    """DESIGN section 5's optimizer groups over the parameters ``model`` holds now, from plans made before
    sharding (:func:`hf_freeze.optim.param_groups`, each tensor swapped for the model's tensor of that name).

    FSDP1 with ``use_orig_params=False``: over its flat parameters (:func:`hf_freeze.fsdp1.flat_param_groups`).
    """
    if uses_flat_parameters(model):
        return flat_param_groups(model, plans, recipe, lr, weight_decay, decay_names)
    groups = param_groups(plans, recipe, lr, weight_decay, decay_names)
    names = {id(tensor): name for name, tensor in plans[0].tensors().items()}
    current = dict(named_tensors(model))
    for group in groups:
        group["params"] = [current[names[id(param)]] for param in group["params"]]
    return groups


def release_tensors(plans: list[Plan]) -> list[Plan]:
    """The same plans without references to tensors: after sharding they would keep the whole model alive.

    Decisions stay, so :func:`apply_phase` and reports work; ``Plan.tensors()`` is empty.
    """
    return [replace(planned, _tensors={}) for planned in plans]


# ---------------------------------------------------------------------------------------------- rank 0


def on_rank0(function: Callable[[], T]) -> T | None:
    """Run ``function`` on rank 0 only; if it raises a DeltaError or RecipeError, every rank raises it.

    Returns its result on rank 0 and None elsewhere. Not distributed: just calls it.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return function()
    result: T | None = None
    verdict: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            result = function()
        except (DeltaError, RecipeError) as error:
            verdict = [(type(error).__name__, str(error))]
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        kind, message = verdict[0]
        raise (DeltaError if kind == "DeltaError" else RecipeError)(message)
    return result


# ---------------------------------------------------------------------------------------------- deltas


def gather_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU values of the trainable parameters and the buffers of a sharded model, by canonical name.

    A collective: call it on every rank. Frozen parameters are not gathered. Rank 0 gets the tensors, the
    other ranks an empty dict.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    offload = cpu_offload_works(model)
    options = StateDictOptions(full_state_dict=True, cpu_offload=offload, ignore_frozen_params=True)
    gathered = get_model_state_dict(model, options=options)
    if not offload and dist.is_initialized() and dist.get_rank() != 0:
        return {}
    return {canonical_name(name): tensor.cpu() for name, tensor in gathered.items()}


def cpu_offload_works(model: nn.Module) -> bool:
    """Whether a full state dict can be gathered into rank 0's CPU memory only (``cpu_offload=True``).

    Not for FSDP1 on CPU parameters: its rank-0-only gather then fails with "setStorage: ... out of bounds for
    storage of size 0" (torch 2.13); there every rank gathers (only what trains) and the others drop it.
    """
    if sharding_engine(model) != "fsdp1":
        return True
    return any(flat.device.type != "cpu" for flat, _, _ in flat_units(model))


def delta_of(model: nn.Module, gathered: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``tensors`` and ``aliases`` for :func:`hf_freeze.delta.save_delta`, from rank 0's :func:`gather_trainable`."""
    recorded = base_samples(model)
    first = recorded["aliases"]
    by_first = {first.get(name, name): tensor for name, tensor in gathered.items()}
    trainable = [name for name in by_first if recorded["tensors"].get(name, {}).get("param")]
    names = sharded_delta_names(model, trainable)
    missing = [name for name in names if name not in by_first]
    if missing:
        raise DeltaError(
            f"The delta of the sharded {type(model).__name__} needs '{missing[0]}', which is frozen and not in the "
            "base checkpoint, and gathering it would mean gathering frozen weights; make it trainable, or save "
            "the delta from the unsharded model."
        )
    aliases = {alias: name for alias, name in first.items() if name in names and alias != name}
    return {"tensors": {name: by_first[name] for name in names}, "aliases": aliases}


def save_sharded_delta(
    model: nn.Module, path: str | Path, *, writer: Callable[..., Any] = save_delta, **kwargs: Any
) -> Path:
    """Gather what trains on every rank and write the delta of a sharded model from rank 0; returns ``path``.

    A collective: call it on every rank. ``writer`` is :func:`hf_freeze.delta.save_delta` or a function with
    its signature (FreezeTrainer writes into a shared checkpoint folder); ``kwargs`` go to it.
    """
    _require_fsdp(model)
    gathered = gather_trainable(model)
    on_rank0(lambda: writer(model, path, **delta_of(model, gathered), **kwargs))
    return Path(path)


def load_sharded_delta(model: nn.Module, path: str | Path, *, force: bool = False) -> nn.Module:
    """Verify the delta at ``path`` on rank 0 and load it into the sharded ``model`` on every rank.

    A collective. Rank 0 checks it as :func:`hf_freeze.delta.load_delta` does (against what was recorded
    before sharding; ``force`` skips the base check) and every rank raises its DeltaError; then the tensors
    are broadcast from rank 0 into each rank's shards. Only rank 0 reads the folder.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    _require_fsdp(model)
    delta = on_rank0(lambda: read_delta(model, path, force=force))
    full: dict[str, torch.Tensor] = {}
    if delta is not None:
        keys = _state_dict_keys(model)
        names = {name: [name] for name in delta.tensors}
        for alias, name in delta.aliases.items():
            names[name].append(alias)
        full = {keys[alias]: delta.tensors[name] for name, aliases in names.items() for alias in aliases}
    if sharding_engine(model) == "fsdp2":
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        set_model_state_dict(model, full, options=options)
    else:  # FSDP1 flat parameters refuse the broadcast (module docstring): every rank loads the full tensors
        from torch.distributed.fsdp import FullyShardedDataParallel, StateDictType

        shared = [full]
        dist.broadcast_object_list(shared, src=0)
        with FullyShardedDataParallel.state_dict_type(model, StateDictType.FULL_STATE_DICT):
            model.load_state_dict(shared[0], strict=False)
    return model


def load_delta_into(model: nn.Module, path: str | Path, *, force: bool = False) -> nn.Module:
    """:func:`load_sharded_delta` for an FSDP model (a collective), :func:`hf_freeze.delta.load_delta` otherwise."""
    return load_sharded_delta(model, path, force=force) if is_fsdp(model) else load_delta(model, path, force=force)


def _state_dict_keys(model: nn.Module) -> dict[str, str]:
    """Canonical name to the key the distributed state-dict API uses for it (FSDP1 flat parameters expanded)."""
    from torch.distributed.checkpoint.state_dict import _get_fqns  # the API's own name mapping

    named = chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    return {canonical_name(fqn): fqn for name, _ in named for fqn in _get_fqns(model, name)}


def _require_fsdp(model: nn.Module) -> None:
    engine = sharding_engine(model)
    if engine not in ("fsdp1", "fsdp2"):
        raise DeltaError(
            f"The {type(model).__name__} is not sharded by FSDP ({engine or 'not sharded'}); use "
            "hf_freeze.delta.save_delta / load_delta for whole models."
        )
