"""DeepSpeed ZeRO-2/3 with a recipe: the optimizer over what trains, trainable-only checkpoints, a gathered
delta, and the refusal of a phase that unfreezes after the engine exists.

Design, from what DeepSpeed 0.19.8 does (measured on CPU with gloo, two ranks; ``tests/test_deepspeed.py``):

- DeepSpeed's ZeRO optimizers take, from the client optimizer's groups, only the parameters that require grad
  when ``deepspeed.initialize`` runs (``deepspeed.runtime.utils.is_optimized_parameter``), flatten them into
  per-group buffers and partition those across ranks. Frozen parameters get no gradient buffer, no fp32 master
  copy and no optimizer state. ZeRO-3 still partitions every parameter, frozen ones included (each rank keeps
  ``1/world`` of it in ``param.ds_tensor``; ``param.data`` is an empty placeholder outside forward/backward).
- So the one-optimizer-over-every-phase rule of DESIGN section 5 cannot hold here: ZeRO-1/2 even crash on a
  group whose parameters are all still frozen (``IndexError`` in ``bit16_groups[i][0]``). The engine gets the
  groups of the phases reached so far (:func:`engine_param_groups`).
- A parameter unfrozen after ``initialize`` is in no ZeRO group: its gradient is never reduced or applied and it
  never moves, with no error or warning. Every phase change goes through :func:`check_phase_change`, which
  refuses it with a :class:`RecipeError` naming the tensor, the phase and the fix. The fix is a new engine for
  that phase: :func:`export_delta`, then :func:`initialize` with ``phase=`` on a model with the delta loaded
  (the optimizer moments restart).
- Checkpoints: ``engine.save_checkpoint(..., exclude_frozen_parameters=True)`` leaves frozen tensors out of the
  module state and of ZeRO's frozen-parameter records (:func:`save_checkpoint`); the optimizer partitions hold
  only what trains anyway. Reload with ``engine.load_checkpoint(..., load_module_strict=False)``.
- The delta: under ZeRO-3 no rank holds a whole tensor, so :func:`export_delta` gathers the trainable
  parameters one at a time (``deepspeed.zero.GatheredParameters``, a collective on every rank); rank 0 keeps CPU
  copies, picks the delta's tensors as for FSDP (:func:`hf_freeze.fsdp.delta_of`) and writes them with
  ``save_delta(tensors=, aliases=)``. The base fingerprint comes from the samples :func:`initialize` records
  before sharding (:func:`hf_freeze.fingerprint.record_base_samples`): frozen tensors never change, so no frozen
  weight is gathered. ZeRO-1/2 keep every parameter whole on every rank, and rank 0 saves the delta as usual.
- :func:`memory_stats` gives :mod:`hf_freeze.memory`'s per-rank figures (parameters, gradients, optimizer state
  against the trainable-only limits) read where ZeRO keeps them, plus its fp32 master partitions.

DeepSpeed is imported only inside the functions that need it, so this module (and the linter that uses it)
imports without DeepSpeed installed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hf_freeze.apply import apply_plan
from hf_freeze.delta import save_delta
from hf_freeze.errors import RecipeError
from hf_freeze.fingerprint import record_base_samples, state_tensors, unique_tensors
from hf_freeze.fsdp import delta_of, on_rank0
from hf_freeze.grad_sync import world_size
from hf_freeze.memory import local_bytes
from hf_freeze.names import named_tensors
from hf_freeze.optim import decay_parameter_names, optimizer_state_bytes, param_groups
from hf_freeze.phases import PhaseController, phase_plans
from hf_freeze.plan import OPTIMIZER_STATE_COPIES, Plan
from hf_freeze.recipe import Recipe


def is_deepspeed_engine(model: Any) -> bool:
    """Whether ``model`` is a ``deepspeed.DeepSpeedEngine`` (checked without importing DeepSpeed)."""
    return any(cls.__name__ == "DeepSpeedEngine" for cls in type(model).__mro__)


def zero_stage(engine: Any) -> int:
    """The ZeRO stage of ``engine`` (0 when ZeRO is off)."""
    return int(engine.zero_optimization_stage())


# ---------------------------------------------------------------------------------------------- building


def engine_param_groups(
    plans: list[Plan],
    recipe: Recipe,
    lr: float,
    weight_decay: float,
    decay_names: set[str] | None = None,
    phase: int = 0,
) -> list[dict[str, Any]]:
    """The groups of :func:`hf_freeze.optim.param_groups` of phases ``0..phase``: what a DeepSpeed engine built
    at ``phase`` can optimize (a group of a later phase is all frozen, which ZeRO-1/2 cannot build)."""
    groups = param_groups(plans, recipe, lr, weight_decay, decay_names)
    return [group for group in groups if group["hf_freeze_phase"] <= phase]


def initialize(
    model: nn.Module,
    recipe: Recipe | dict | str,
    config: dict[str, Any],
    *,
    lr: float,
    weight_decay: float = 0.0,
    phase: int = 0,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    **optimizer_kwargs: Any,
) -> tuple[Any, PhaseController]:
    """Apply ``recipe`` at ``phase`` to ``model``, build the optimizer over what trains, ``deepspeed.initialize``.

    Returns ``(engine, phases)``. ``config`` is a DeepSpeed config dict; ``zero_allow_untested_optimizer`` is
    set (the client optimizer is a plain ``optimizer_cls``, which needs no compiled ops). Weight decay follows
    the Trainer's rule (not biases, not norms). Phase changes must go through :func:`advance_phase`. Call it
    after ``deepspeed.init_distributed`` on every rank.
    """
    import deepspeed

    recipe = Recipe.coerce(recipe)
    plans = phase_plans(model, recipe)  # every recipe error is raised here, before anything changes
    phases = PhaseController(model, recipe, plans)
    if phase:
        phases.load_state_dict({"phase": phase})
    else:
        apply_plan(model, plans[0])
    record_base_samples(model)  # before ZeRO-3 partitions the weights: the delta's base fingerprint needs them
    groups = engine_param_groups(plans, recipe, lr, weight_decay, decay_parameter_names(model), phase)
    optimizer = optimizer_cls(groups, lr=lr, **optimizer_kwargs)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, config={**config, "zero_allow_untested_optimizer": True}
    )
    return engine, phases


# ---------------------------------------------------------------------------------------------- phases


def optimized_names(engine: Any) -> set[str]:
    """Canonical names of the parameters ``engine``'s optimizer updates (what ZeRO took at ``initialize``)."""
    optimizer = engine.optimizer
    if hasattr(optimizer, "fp16_groups"):  # ZeRO-3
        groups = optimizer.fp16_groups
    elif hasattr(optimizer, "bit16_groups"):  # ZeRO-1/2
        groups = optimizer.bit16_groups
    else:  # ZeRO off: the client optimizer (possibly inside a precision wrapper)
        groups = [group["params"] for group in getattr(optimizer, "optimizer", optimizer).param_groups]
    held = {id(param) for param in itertools.chain.from_iterable(groups)}
    return {name for name, param in named_tensors(engine) if id(param) in held}


def check_phase_change(engine: Any, planned: Plan) -> None:
    """Refuse ``planned`` (the next phase) if it trains a tensor ``engine``'s optimizer does not hold.

    DeepSpeed never updates such a tensor and says nothing; the :class:`RecipeError` names the tensor, the phase
    and how to build an engine for it. No flag changes either way.
    """
    held = optimized_names(engine)
    late = [name for name in planned.trainable if name not in held]
    if late:
        raise RecipeError(
            _late_unfreeze_message(planned, late, f"the DeepSpeed ZeRO-{zero_stage(engine)} engine was built")
        )


def late_unfreeze_messages(plans: list[Plan]) -> list[str]:
    """For each phase after the first that trains tensors phase 0 does not, the sentence :func:`check_phase_change`
    will raise when an engine built at phase 0 reaches it (``hf-freeze plan --lint deepspeed``)."""
    first = set(plans[0].trainable)
    messages = []
    for planned in plans[1:]:
        late = [name for name in planned.trainable if name not in first]
        if late:
            messages.append(_late_unfreeze_message(planned, late, "the DeepSpeed engine is built"))
    return messages


def _late_unfreeze_message(planned: Plan, late: list[str], when: str) -> str:
    """One sentence: which phase unfreezes what after ``when``, why that fails silently, and the fix."""
    recipe = planned.recipe
    phase_name = recipe.phases[planned.phase].name if recipe.phases else "main"
    more = f" and {len(late) - 1} more tensors" if len(late) > 1 else ""
    return (
        f"{recipe.source}, phase {planned.phase} ({phase_name}): unfreezes {late[0]}{more} after {when}, and "
        "DeepSpeed would silently never update them (its optimizer holds only what required grad at "
        "deepspeed.initialize); export the delta (hf_freeze.deepspeed.export_delta) and build a new engine with "
        f"hf_freeze.deepspeed.initialize(..., phase={planned.phase}) on the model with that delta loaded, or "
        "unfreeze them in the first phase."
    )


def check_next_phase(model: Any, phases: PhaseController) -> None:
    """:func:`check_phase_change` for the phase after ``phases``' current one when ``model`` is a DeepSpeed engine;
    nothing otherwise (another engine, or no next phase). FreezeTrainer and FreezeController call it first."""
    if is_deepspeed_engine(model) and not phases.is_last:
        check_phase_change(model, phases.plans[phases.phase + 1])


def advance_phase(engine: Any, phases: PhaseController, step: int, epoch: float = 0.0) -> Plan:
    """``phases.advance(step, epoch)`` after :func:`check_phase_change` accepts the next phase."""
    check_next_phase(engine, phases)
    return phases.advance(step, epoch)


# ---------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(engine: Any, save_dir: str | Path, tag: str | None = None, **client_state: Any) -> None:
    """``engine.save_checkpoint`` without frozen tensors (collective: every rank calls it).

    Frozen weights are the base's; they are neither in the module state nor in ZeRO's frozen-parameter records.
    Load it back with ``engine.load_checkpoint(save_dir, tag, load_module_strict=False)``.
    """
    engine.save_checkpoint(str(save_dir), tag=tag, client_state=client_state, exclude_frozen_parameters=True)


def export_delta(engine: Any, path: str | Path, *, writer: Callable[..., Any] = save_delta, **save_kwargs: Any) -> Path:
    """Write the delta of ``engine.module`` from rank 0; returns ``path``. A collective: every rank calls it.

    Under ZeRO-3 the delta's parameters are gathered one at a time (:func:`gather_trainable`) and rank 0 picks
    and writes them (:func:`hf_freeze.fsdp.delta_of`; the base fingerprint comes from the samples
    :func:`initialize` recorded). ZeRO-1/2 keep whole parameters: rank 0 saves as for an unwrapped model. A
    DeltaError or RecipeError on rank 0 is raised on every rank. ``writer`` is
    :func:`hf_freeze.delta.save_delta` or a function with its signature (a Trainer's shared checkpoint folder);
    ``save_kwargs`` go to it (``recipe``, ``max_shard_size``, ``base_model``).
    """
    model = engine.module
    if zero_stage(engine) < 3:
        on_rank0(lambda: writer(model, path, **save_kwargs))
    else:
        gathered = gather_trainable(engine)
        on_rank0(lambda: writer(model, path, **delta_of(model, gathered), **save_kwargs))
    return Path(path)


def gather_trainable(engine: Any) -> dict[str, torch.Tensor]:
    """Whole CPU values of the trainable parameters and the persistent buffers of a ZeRO-3 ``engine.module``, by
    canonical name. A collective: each parameter is gathered in turn on every rank, so at most one whole tensor
    is resident at a time; rank 0 keeps the copies, the other ranks get an empty dict. Frozen parameters are not
    gathered."""
    import deepspeed

    keep = not dist.is_initialized() or dist.get_rank() == 0
    chosen = {
        name: tensor
        for name, tensor in unique_tensors(state_tensors(engine.module)).items()
        if not isinstance(tensor, nn.Parameter) or tensor.requires_grad
    }
    gathered: dict[str, torch.Tensor] = {}
    for name in sorted(chosen):  # one order on every rank: each gather is a collective
        tensor = chosen[name]
        with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None, enabled=hasattr(tensor, "ds_id")):
            if keep:
                gathered[name] = tensor.detach().to("cpu", copy=True)
    return gathered


# ---------------------------------------------------------------------------------------------- memory


def memory_stats(engine: Any) -> dict[str, Any]:
    """:func:`hf_freeze.memory.memory_stats`'s figures for a DeepSpeed engine, measured where ZeRO keeps them.

    ``parameter_bytes``: local parameter storage (under ZeRO-3 this rank's partitions, ``param.ds_tensor``).
    ``gradient_bytes``: ZeRO's gradient buffers (ZeRO-1/2 ``grads_in_partition`` and ``averaged_gradients``,
    ZeRO-3 ``grad_partitions_flat_buffer``), the master partitions' gradients and any ``.grad`` left on a
    parameter; see them after ``engine.backward`` and before ``engine.step``. ``optimizer_state_bytes``: the
    inner optimizer's state. Also ``master_weight_bytes`` (ZeRO's fp32 copies of this rank's share of what
    trains) with ``master_weight_limit_bytes``, and ``zero_stage``. Views of one buffer count once;
    communication buckets (sized by ``reduce_bucket_size``, not by the model) are left out. The limits divide
    the trainable bytes by the world size for what ZeRO partitions: optimizer state and master weights from
    stage 1, gradients from stage 2.
    """
    stage, size = zero_stage(engine), world_size()
    params = list(unique_tensors(dict(named_tensors(engine))).values())
    optimizer = engine.optimizer
    inner = getattr(optimizer, "optimizer", optimizer)
    masters = getattr(optimizer, "single_partition_of_fp32_groups", None) or getattr(
        optimizer, "fp32_partitioned_groups_flat", []
    )
    grads = [p.grad for p in params] + [master.grad for master in masters]
    grads += [getattr(optimizer, "grads_in_partition", None), getattr(optimizer, "grad_partitions_flat_buffer", None)]
    for value in (getattr(optimizer, "averaged_gradients", None) or {}).values():
        grads += value if isinstance(value, list) else [value]
    trainable = sum(_numel(p) * p.element_size() for p in params if p.requires_grad)
    state_share = -(-trainable // size) if stage >= 1 else trainable
    copies = OPTIMIZER_STATE_COPIES.get(type(inner).__name__.lower(), 2)
    return {
        "engine": "deepspeed",
        "zero_stage": stage,
        "rank": dist.get_rank() if dist.is_initialized() else 0,
        "world_size": size,
        "parameter_bytes": local_bytes(p.ds_tensor if hasattr(p, "ds_tensor") else p for p in params),
        "gradient_bytes": local_bytes(grads),
        "master_weight_bytes": local_bytes(masters),
        "optimizer_state_bytes": optimizer_state_bytes(inner),
        "trainable_bytes": trainable,
        "gradient_limit_bytes": -(-trainable // size) if stage >= 2 else trainable,
        "master_weight_limit_bytes": 4 * -(-sum(_numel(p) for p in params if p.requires_grad) // size),
        "optimizer_state_limit_bytes": copies * state_share,
    }


def _numel(param: torch.Tensor) -> int:
    """Elements of the whole parameter (a ZeRO-3 placeholder's ``ds_numel``)."""
    return int(getattr(param, "ds_numel", param.numel()))
