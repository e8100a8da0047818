"""FSDP1 (``FullyShardedDataParallel``) with a recipe: units that never mix, phases on flat parameters.

FSDP1 flattens the parameters of each unit (a wrapped module, minus nested units) into one ``FlatParameter``.
Measured with torch 2.13 on CPU (gloo, tests/test_fsdp1.py):

- With ``use_orig_params=False`` a unit mixing trainable and frozen parameters fails at wrap time with
  "Must flatten tensors with uniform `requires_grad` when `use_orig_params=False`", naming no unit.
  :func:`hf_freeze.lint.lint` names it before wrapping, from :func:`planned_units`.
- With ``use_orig_params=True`` the mix is accepted, but a unit with any trainable parameter allocates the
  gradient of its whole local shard: frozen elements pay gradient memory.
- A unit's flat parameter takes ``requires_grad`` at wrap time, and gradients reach its parameters only
  through it. A phase that unfreezes a unit after wrapping must set the flat parameter's flag (with
  ``use_orig_params=False`` the original parameters no longer exist to set): :func:`apply_plan_to_units`.

:func:`trainable_wrap_policy` builds an auto-wrap policy whose units are uniform in every phase of a recipe:
each parameter gets a key, the first phase in which it trains (None: never), and modules are wrapped bottom
up so that no unit holds two keys; each block of the model's main stacks is also a unit (the usual memory
granularity). Unlike PEFT's ``fsdp_auto_wrap_policy``, which looks at a module's weight only, every
parameter counts, biases included. A module whose own parameters disagree (``freeze_dense_kernels``: frozen
weight, trainable bias) cannot be uniform with any policy; :func:`mixed_modules` lists them and the linter
points to ``use_orig_params=True`` or FSDP2.

With ``use_orig_params=False`` the optimizer sees flat parameters: :func:`flat_param_groups` gives one group
per phase, and a unit's weight decay is all or nothing (it decays when any of its parameters would).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from hf_freeze.apply import apply_plan
from hf_freeze.errors import RecipeError
from hf_freeze.names import canonical_name
from hf_freeze.phases import first_trainable_phase, phase_plans
from hf_freeze.plan import Plan
from hf_freeze.recipe import Recipe
from hf_freeze.selectors import Anatomy

# The phase in which a tensor first trains; None: it never trains.
Key = int | None


@dataclass(frozen=True)
class Unit:
    """One FSDP1 unit: the wrapped module's canonical name ('' for the root) and the parameters it flattens."""

    name: str
    params: tuple[str, ...]

    @property
    def label(self) -> str:
        """How messages name the unit."""
        return f"unit '{self.name}'" if self.name else "root unit"


def parameter_keys(model: nn.Module, recipe: Recipe | dict | str | None = None) -> dict[str, Key]:
    """Each parameter's key: the first phase of ``recipe`` in which it trains, or None.

    Without a recipe, the current flags decide (0 for ``requires_grad=True``). Tied aliases share a key.
    """
    if recipe is None:
        return {canonical_name(n): (0 if p.requires_grad else None) for n, p in model.named_parameters()}
    plans = phase_plans(model, Recipe.coerce(recipe))
    first = first_trainable_phase(plans)
    return {alias: first.get(d.name) for d in plans[0].decisions.values() for alias in d.aliases}


def _own_parameters(module: nn.Module, prefix: str) -> Iterator[str]:
    """Canonical names of the parameters registered on ``module`` itself."""
    for local, param in module._parameters.items():
        if param is not None:
            yield canonical_name(f"{prefix}.{local}" if prefix else local)


def mixed_modules(model: nn.Module, keys: dict[str, Key]) -> dict[str, dict[str, Key]]:
    """Modules whose own parameters disagree in key (no FSDP1 unit can hold them uniformly), by canonical name."""
    mixed = {}
    for name, module in model.named_modules():
        own = {param: keys.get(param) for param in _own_parameters(module, name)}
        if len(set(own.values())) > 1:
            mixed[canonical_name(name)] = own
    return mixed


def trainable_units(model: nn.Module, recipe: Recipe | dict | str | None = None, *, blocks: bool = True) -> list[str]:
    """Canonical names of the modules :func:`trainable_wrap_policy` wraps (the root is always a unit too)."""
    keys = parameter_keys(model, recipe)
    block_ids = {id(block) for stack in Anatomy(model).all_stacks() for block in stack} if blocks else set()
    wrapped: list[str] = []

    def visit(name: str, module: nn.Module) -> set[Key]:
        """Wrap below ``module`` as needed; return the keys of its parameters left for its parent's unit."""
        own = {keys.get(param) for param in _own_parameters(module, name)}
        children = [(f"{name}.{child}" if name else child, sub) for child, sub in module.named_children()]
        remaining = {child: visit(child, sub) for child, sub in children}
        left = set(own)
        if own:
            target = next(iter(own)) if len(own) == 1 else None
        else:
            target = None if any(None in keys_ for keys_ in remaining.values()) else _largest(remaining)
        for child, child_keys in remaining.items():
            if child_keys and child_keys != {target}:
                wrapped.append(canonical_name(child))
            else:
                left |= child_keys
        if name and (id(module) in block_ids or len(own) > 1) and left:
            wrapped.append(canonical_name(name))
            return set()
        return left

    visit("", model)
    return wrapped


def _largest(remaining: dict[str, set[Key]]) -> Key:
    """The key most children share (the first such in module order), so the fewest children are wrapped."""
    counts: dict[Key, int] = {}
    for child_keys in remaining.values():
        for key in child_keys:
            counts[key] = counts.get(key, 0) + 1
    return max(counts, key=lambda key: counts[key]) if counts else None


def trainable_wrap_policy(
    model: nn.Module, recipe: Recipe | dict | str | None = None, *, blocks: bool = True
) -> Callable[..., bool]:
    """An FSDP1 ``auto_wrap_policy`` for ``model`` whose units are uniform in every phase of ``recipe``.

    Pass it to ``FullyShardedDataParallel(model, auto_wrap_policy=...)`` or to Accelerate's
    ``FullyShardedDataParallelPlugin(auto_wrap_policy=...)``. Without a recipe the current ``requires_grad``
    flags decide. ``blocks=False`` leaves the blocks of the main stacks in their parent's unit. The policy
    names modules of this model object; build it for the model that will be wrapped.
    """
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    names = set(trainable_units(model, recipe, blocks=blocks))
    targets = {id(module) for name, module in model.named_modules() if canonical_name(name) in names}
    return functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda module: id(module) in targets)


def planned_units(model: nn.Module, auto_wrap_policy: Any = None) -> list[Unit]:
    """The FSDP1 units ``FullyShardedDataParallel(model, auto_wrap_policy=...)`` would build, before wrapping.

    Follows FSDP1's own bottom-up walk: a module is a unit when the policy says so for it (with the number of
    parameter elements not yet in a nested unit); the root is always one. ``auto_wrap_policy`` is a policy
    callable (``functools.partial`` of ``transformer_auto_wrap_policy`` and the like), a policy object
    (``ModuleWrapPolicy``, ``CustomPolicy``) or None (one unit).
    """
    from torch.distributed.fsdp.wrap import _Policy

    targets: set[int] = set()
    if isinstance(auto_wrap_policy, _Policy):
        targets = {id(module) for module in auto_wrap_policy._run_policy(model, set(), {})}
    elif auto_wrap_policy is not None:
        _simulate(model, auto_wrap_policy, targets, root=True)
    units: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    seen: set[int] = set()
    for path, module in model.named_modules():
        parent = owner.get(path.rpartition(".")[0], "") if path else ""
        owner[path] = canonical_name(path) if path and id(module) in targets else parent
        unit = units.setdefault(owner[path], [])
        for local, param in module._parameters.items():
            if param is not None and id(param) not in seen:
                seen.add(id(param))
                unit.append(canonical_name(f"{path}.{local}" if path else local))
    return [Unit(name, tuple(params)) for name, params in units.items() if params]


def _simulate(module: nn.Module, policy: Callable[..., bool], targets: set[int], root: bool = False) -> int:
    """FSDP1's ``_recursive_wrap`` without wrapping: collect the modules it would wrap; return numel wrapped."""
    total = sum(param.numel() for param in module.parameters())
    if not policy(module=module, recurse=True, nonwrapped_numel=total):
        return 0
    wrapped = sum(_simulate(child, policy, targets) for child in module.children())
    if not root and policy(module=module, recurse=False, nonwrapped_numel=total - wrapped):
        targets.add(id(module))
        return total
    return wrapped


# ---------------------------------------------------------------------------------------------- after wrapping


def flat_units(model: nn.Module) -> Iterator[tuple[Any, list[str], bool]]:
    """``(flat parameter, canonical names of its parameters, use_orig_params)`` for every FSDP1 unit."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    for path, module in model.named_modules():
        if isinstance(module, FSDP) and module._handle is not None:
            prefix = canonical_name(path)
            flat = module._handle.flat_param
            names = [f"{prefix}.{fqn}" if prefix else fqn for fqn in flat._fqns]
            yield flat, [canonical_name(name) for name in names], module._use_orig_params


def apply_plan_to_units(model: nn.Module, planned: Plan) -> Plan:
    """Set ``requires_grad`` under FSDP1 as ``planned`` decides: on each unit's flat parameter (trainable when
    any of its parameters is) and, with ``use_orig_params=True``, on the original parameters too.

    With ``use_orig_params=False`` a unit whose parameters disagree is a RecipeError naming it.
    """
    units = list(flat_units(model))
    flags = []
    for flat, names, orig in units:
        trainable = {planned.decision(name).trainable for name in names}
        if len(trainable) > 1 and not orig:
            raise RecipeError(
                f"Phase {planned.phase} of {planned.recipe.name!r} trains only part of the FSDP1 unit holding "
                f"{names[0]}; with use_orig_params=False every unit must train whole in every phase: wrap with "
                "hf_freeze.fsdp1.trainable_wrap_policy(model, recipe)."
            )
        flags.append((flat, True in trainable))
    if any(orig for _, _, orig in units):
        apply_plan(model, planned)
    for flat, trainable in flags:
        flat.requires_grad_(trainable)
        if not trainable:
            flat.grad = None
    return planned


def flat_param_groups(
    model: nn.Module,
    plans: list[Plan],
    recipe: Recipe,
    lr: float,
    weight_decay: float,
    decay_names: set[str] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer groups over FSDP1 flat parameters (``use_orig_params=False``): one per (phase, decay).

    A unit joins the group of the first phase in which its parameters train (they agree: lint); it decays
    when any of its parameters is in ``decay_names`` (None: all decay). Units that never train are left out.
    """
    first = first_trainable_phase(plans)
    aliases = {alias: d.name for d in plans[0].decisions.values() for alias in d.aliases}
    grouped: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for flat, names, _ in flat_units(model):
        phases = {first.get(aliases.get(name, name)) for name in names} - {None}
        if not phases:
            continue
        decay = decay_names is None or any(name in decay_names for name in names)
        grouped.setdefault((min(phases), decay), []).append(flat)
    groups = []
    for (phase, decay), params in sorted(grouped.items(), key=lambda item: (item[0][0], not item[0][1])):
        scale = recipe.phases[phase].lr_scale if recipe.phases else 1.0
        groups.append(
            {
                "params": params,
                "lr": lr * scale,
                "weight_decay": weight_decay if decay else 0.0,
                "hf_freeze_phase": phase,
                "hf_freeze_decay": decay,
            }
        )
    return groups


def uses_flat_parameters(model: nn.Module) -> bool:
    """Whether ``model`` is under FSDP1 with ``use_orig_params=False`` (its optimizer must see flat parameters)."""
    return any(not orig for _, _, orig in flat_units(model))
