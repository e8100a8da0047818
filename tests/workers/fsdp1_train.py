"""FSDP1 on CPU through a phase change: the trainable wrap policy with flat parameters, against a mixed unit.

The tiny BERT and recipe of ``workers.ddp_train`` (head, then the top block after ``SWITCH_STEP``), the
batches of ``workers.fsdp_common``. Run under ``accelerate launch`` (two ranks); per rank it writes:

- ``policy.safetensors`` (rank 0): every parameter after training with
  ``trainable_wrap_policy`` and ``use_orig_params=False`` (flat parameters; ``flat_param_groups``,
  ``apply_phase`` on the flat parameters);
- ``orig.safetensors`` (rank 0): the same run with one mixed unit and ``use_orig_params=True``;
- ``delta/`` (``save_sharded_delta`` of the policy run) and ``loaded.safetensors`` (rank 0: a fresh wrapped
  base after ``load_sharded_delta`` of it);
- ``result.json``: per run the memory figures while gradients exist (after training, so in the last phase),
  the units FSDP1 built, and the ``ValueError`` FSDP1 raises for the mixed unit with ``use_orig_params=False``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from hf_freeze import Recipe
from hf_freeze.apply import apply_plan
from hf_freeze.fingerprint import record_base_samples
from hf_freeze.fsdp import apply_phase, load_sharded_delta, optimizer_groups, release_tensors, save_sharded_delta
from hf_freeze.fsdp1 import flat_units, trainable_wrap_policy
from hf_freeze.phases import PhaseController, phase_plans
from workers.ddp_train import RECIPE, tiny_bert
from workers.fsdp2_train import BATCH, STEPS
from workers.fsdp_common import (
    LEARNING_RATE,
    batches,
    full_parameters,
    init_gloo,
    memory_with_gradients,
    train_loop,
    write_rank_result,
    write_tensors,
)

CPU = torch.device("cpu")


def wrap(model: nn.Module, *, policy: bool, use_orig_params: bool) -> nn.Module:
    """Record the base samples and wrap with FSDP1 (``trainable_wrap_policy`` of RECIPE, or one unit)."""
    record_base_samples(model)
    auto_wrap_policy = trainable_wrap_policy(model, RECIPE) if policy else None
    return FSDP(model, device_id=CPU, use_orig_params=use_orig_params, auto_wrap_policy=auto_wrap_policy)


def train(*, policy: bool, use_orig_params: bool) -> tuple[nn.Module, dict[str, Any]]:
    """Train under FSDP1; returns the wrapped model and facts (losses, phase changes, memory, units)."""
    rank, world_size = init_gloo()
    model = tiny_bert().train()
    recipe = Recipe.from_dict(RECIPE)
    plans = phase_plans(model, recipe)
    apply_plan(model, plans[0])
    wrapped = wrap(model, policy=policy, use_orig_params=use_orig_params)
    optimizer = torch.optim.AdamW(optimizer_groups(wrapped, plans, recipe, LEARNING_RATE, 0.0))
    phases = PhaseController(wrapped, recipe, release_tensors(plans), apply=apply_phase)
    data = batches(BATCH, STEPS, rank, world_size)
    losses, switched = train_loop(wrapped, optimizer, data, phases)
    units = [names for _, names, _ in flat_units(wrapped)]
    memory = memory_with_gradients(wrapped, optimizer, data[0])
    return wrapped, {"losses": losses, "switched": switched, "memory": memory, "units": units}


def main(argv: list[str] | None = None) -> None:
    """Two ranks: the policy run (and its delta), the mixed-unit run, the refused mixed unit."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    out = Path(parser.parse_args(argv).out)
    rank, world_size = init_gloo()

    policy_model, policy = train(policy=True, use_orig_params=False)
    write_tensors(out, rank, "policy", full_parameters(policy_model))
    save_sharded_delta(policy_model, out / "delta")

    fresh = tiny_bert()
    apply_plan(fresh, phase_plans(fresh, Recipe.from_dict(RECIPE))[0])
    fresh = wrap(fresh, policy=True, use_orig_params=False)
    load_sharded_delta(fresh, out / "delta")
    write_tensors(out, rank, "loaded", full_parameters(fresh))

    orig_model, orig = train(policy=False, use_orig_params=True)
    write_tensors(out, rank, "orig", full_parameters(orig_model))

    mixed = tiny_bert()
    apply_plan(mixed, phase_plans(mixed, Recipe.from_dict(RECIPE))[0])
    try:
        FSDP(mixed, device_id=CPU, use_orig_params=False)
        refused = None
    except ValueError as error:
        refused = str(error)
    write_rank_result(out, rank, world_size, policy=policy, orig=orig, refused=refused)


if __name__ == "__main__":
    main()
