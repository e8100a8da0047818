"""FSDP2 (``fully_shard``) through a phase change on CPU, and the delta of the sharded run; or one process.

The tiny BERT and recipe of ``workers.ddp_train``: the head trains, the top block is unfrozen after step
``SWITCH_STEP``. :func:`train` runs the loop with hf_freeze's FSDP2 path (``shard_model``,
``optimizer_groups``, ``release_tensors``, ``PhaseController(apply=apply_phase)``) when ``sharded``, or the
same loop on one unsharded process. Under ``accelerate launch`` (two ranks, ``tests/launch.py``) ``main``
writes, per rank (``workers.fsdp_common``):

- ``trained.safetensors`` (rank 0): every parameter after training, gathered;
- ``delta/``: ``save_sharded_delta`` of the trained model;
- ``loaded.safetensors`` (rank 0): a fresh base, sharded, after ``load_sharded_delta`` of that delta;
- ``result.json``: losses, logits of the trained model on a probe batch, the memory figures, whether the
  pre-sharding parameters were freed, the DeltaError each rank raised loading the delta onto another base,
  and the mixed-precision phase change with ``apply_phase`` and with plain ``apply_plan``.
"""

from __future__ import annotations

import argparse
import gc
import weakref
from pathlib import Path
from typing import Any

import torch
from tiny import tiny_model
from torch import nn

from hf_freeze import DeltaError, Recipe, apply_recipe
from hf_freeze.apply import apply_plan
from hf_freeze.fsdp import (
    apply_phase,
    load_sharded_delta,
    optimizer_groups,
    release_tensors,
    save_sharded_delta,
    shard_model,
)
from hf_freeze.optim import param_groups
from hf_freeze.phases import PhaseController, phase_plans
from workers.ddp_train import RECIPE, tiny_bert
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

BATCH = 8  # rows per step, over all ranks
STEPS = 6
PROBE = {"input_ids": torch.tensor([[7, 5, 9, 11, 13, 17], [8, 21, 34, 55, 6, 6]])}


def cpu_mesh() -> Any:
    """The one-dimensional CPU device mesh over every rank."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (init_gloo()[1],))


def train(
    *,
    sharded: bool,
    steps: int = STEPS,
    recipe: dict[str, Any] = RECIPE,
    apply: Any = apply_phase,
    **shard_kwargs: Any,
) -> tuple[nn.Module, torch.optim.Optimizer, dict[str, Any]]:
    """Train the tiny BERT under ``recipe``; returns the model, its optimizer and facts about the run."""
    rank, world_size = init_gloo() if sharded else (0, 1)
    model = tiny_bert().train()
    recipe_ = Recipe.from_dict(recipe)
    plans = phase_plans(model, recipe_)
    apply_plan(model, plans[0])
    before_sharding = weakref.ref(model.classifier.weight)
    if sharded:
        shard_model(model, mesh=cpu_mesh(), **shard_kwargs)
        optimizer = torch.optim.AdamW(optimizer_groups(model, plans, recipe_, LEARNING_RATE, 0.0))
        phases = PhaseController(model, recipe_, release_tensors(plans), apply=apply)
    else:
        optimizer = torch.optim.AdamW(param_groups(plans, recipe_, LEARNING_RATE, 0.0))
        phases = PhaseController(model, recipe_, plans)
    del plans
    gc.collect()
    losses, switched = train_loop(model, optimizer, batches(BATCH, steps, rank, world_size), phases)
    facts = {"losses": losses, "switched": switched, "phase": phases.phase, "freed": before_sharding() is None}
    return model, optimizer, facts


def mixed_precision_phase_change(apply: Any) -> str:
    """Unfreeze a unit that was frozen at its first forward, under bf16 mixed precision: 'ok' or the error."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    recipe = {**RECIPE, "phases": [{**RECIPE["phases"][0], "until": {"step": 1}}, RECIPE["phases"][1]]}
    try:
        _, _, facts = train(sharded=True, steps=3, recipe=recipe, mp_policy=policy, apply=apply)
    except RuntimeError as error:
        return str(error).splitlines()[0]
    return "ok" if facts["switched"] == [1] else f"no phase change: {facts}"


def main(argv: list[str] | None = None) -> None:
    """Two ranks: train, save the delta, load it into a fresh sharded base, refuse another base."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    out = Path(parser.parse_args(argv).out)
    rank, world_size = init_gloo()

    model, optimizer, facts = train(sharded=True)
    stats = memory_with_gradients(model, optimizer, batches(BATCH, 1, rank, world_size)[0])
    write_tensors(out, rank, "trained", full_parameters(model))
    with torch.no_grad():
        logits = model.eval()(**PROBE).logits.tolist()
    save_sharded_delta(model, out / "delta")

    fresh = tiny_bert()
    apply_recipe(fresh, RECIPE)
    shard_model(fresh, mesh=cpu_mesh())
    load_sharded_delta(fresh, out / "delta")
    write_tensors(out, rank, "loaded", full_parameters(fresh))

    other = tiny_model("bert", seed=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
    apply_recipe(other, RECIPE)
    shard_model(other, mesh=cpu_mesh())
    try:
        load_sharded_delta(other, out / "delta")
        refusal = None
    except DeltaError as error:
        refusal = str(error)

    mixed_precision = {"apply_phase": mixed_precision_phase_change(apply_phase)}
    mixed_precision["apply_plan"] = mixed_precision_phase_change(apply_plan)  # last: it may break the unit
    write_rank_result(
        out, rank, world_size, **facts, logits=logits, memory=stats, refusal=refusal, mixed_precision=mixed_precision
    )


if __name__ == "__main__":
    main()
