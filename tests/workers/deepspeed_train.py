"""Train the tiny BERT of ``ddp_train`` under a raw DeepSpeed ZeRO-2/3 engine (CPU, gloo) and write what it did.

Run under ``torchrun`` with two ranks (``tests/launch.py: launch_torchrun``); the Trainer/Accelerate DeepSpeed
path needs a GPU. :data:`RECIPE`: the head and the dense kernels of the first block train (their biases and the
block's norms stay frozen), and phase 1 unfreezes the top block at step ``SWITCH_STEP``. The run, in order:

1. ``hf_freeze.deepspeed.initialize`` (fp32, AdamW with weight decay on kernels only, so decay and no-decay
   groups, ``gradient_clipping=1.0``), then ``SWITCH_STEP`` steps; rank ``r`` of step ``s`` takes rows
   ``[(2s + r) B, (2s + r + 1) B)``, so one process with batch ``2 B`` sees the same data
   (:func:`reference_run`). ``memory`` holds ``memory_stats`` after the last backward and after its step.
2. The phase change is due: ``advance_phase`` must refuse it (``refusal`` holds the message, or null;
   ``flags_kept``: no flag changed).
3. Every parameter (gathered) to ``step-3.safetensors``; a trainable-only checkpoint (``ckpt-trainable``) and,
   for comparison, a full one (``ckpt-full``); the trainable-only one is loaded back (``reload_equal``); the
   delta is exported (``delta/``, written by rank 0).
4. Without the guard: phase 1's flags are set on the live engine and ``LATE_STEPS`` more steps run
   (``late_unfreeze``: whether the unfrozen tensors moved, whether the head still did, any error).
5. The fix the refusal names (``rebuilt``): a fresh model with the delta loaded, a new engine at phase 1,
   ``LATE_STEPS`` steps; what its optimizer holds and what moved.

``result.json`` (written last, see ``workers.common``) also holds ``optimized`` (what the engine's optimizer
holds), ``zero3_partitions`` (per parameter: local, placeholder and full element counts) and
``optimizer_state_elements``.
"""

from __future__ import annotations

import argparse
import traceback
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tiny import random_text_dataset
from torch import nn

from hf_freeze import RecipeError
from hf_freeze.accelerate import decay_parameter_names
from hf_freeze.apply import apply_plan
from hf_freeze.deepspeed import advance_phase, export_delta, initialize, memory_stats, optimized_names, save_checkpoint
from hf_freeze.delta import load_delta
from hf_freeze.memory import memory_line
from hf_freeze.optim import param_groups
from hf_freeze.phases import phase_plans
from hf_freeze.recipe import Recipe
from workers.common import parameters, rank_dir, write_result
from workers.ddp_train import LEARNING_RATE, ROWS, SWITCH_STEP, tiny_bert

BATCH = 4
LATE_STEPS = 2
MAX_GRAD_NORM = 1.0
TAG = "step3"
SNAPSHOT = f"step-{SWITCH_STEP}.safetensors"
WEIGHT_DECAY = 0.01
RECIPE: dict[str, Any] = {
    "name": "head_and_first_kernels_then_top_block",
    "default": "frozen",
    "rules": [
        {"select": "@head", "trainable": True},
        {"select": "@blocks[0:1]", "kinds": "dense", "params": "kernel", "trainable": True},
    ],
    "phases": [
        {"name": "start", "until": {"step": SWITCH_STEP}},
        {"name": "top", "rules": [{"select": "@blocks[-1:]", "trainable": True}]},
    ],
}


def ds_config(stage: int) -> dict[str, Any]:
    """fp32 ZeRO-``stage`` with small buckets; ZeRO-3 partitions every parameter (persistence threshold 0)."""
    zero: dict[str, Any] = {"stage": stage, "reduce_bucket_size": 1 << 20, "allgather_bucket_size": 1 << 20}
    if stage == 3:
        zero.update(stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=1 << 20)
    return {
        "train_micro_batch_size_per_gpu": BATCH,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": MAX_GRAD_NORM,
        "zero_optimization": zero,
        "steps_per_print": 1 << 30,
    }


def batch(step: int, rank: int, size: int, rows: int = BATCH) -> dict[str, torch.Tensor]:
    """Rows ``[(size * step + rank) * rows, ... + rows)`` of the seeded dataset, as tensors."""
    start = (size * step + rank) * rows
    selected = random_text_dataset(ROWS)[start : start + rows]
    return {key: torch.tensor(value) for key, value in selected.items()}


def reference_run(steps: int = SWITCH_STEP) -> nn.Module:
    """One plain-torch process: the same recipe, groups, AdamW, clipping and data (batch ``2 B``) as two ranks."""
    model = tiny_bert()
    recipe = Recipe.from_dict(RECIPE)
    plans = phase_plans(model, recipe)
    apply_plan(model, plans[0])
    groups = param_groups(plans, recipe, LEARNING_RATE, WEIGHT_DECAY, decay_parameter_names(model))
    optimizer = torch.optim.AdamW([g for g in groups if g["hf_freeze_phase"] == 0], lr=LEARNING_RATE)
    for step in range(steps):
        model(**batch(step, 0, 1, rows=2 * BATCH)).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model


def gathered_parameters(engine: Any) -> dict[str, torch.Tensor]:
    """Whole CPU copies of every parameter of ``engine.module`` (gathered under ZeRO-3; a collective)."""
    import deepspeed

    model = engine.module
    with deepspeed.zero.GatheredParameters(list(model.parameters()), enabled=engine.zero_optimization_stage() == 3):
        return parameters(model)


def zero3_partitions(model: nn.Module) -> dict[str, list[int]]:
    """Per parameter: [elements held locally, elements of the placeholder ``.data``, full elements]."""
    return {
        name: [param.ds_tensor.numel(), param.data.numel(), param.ds_numel]
        for name, param in model.named_parameters()
        if hasattr(param, "ds_tensor")
    }


def train_steps(engine: Any, first: int, count: int, rank: int, size: int) -> dict[str, Any]:
    """``count`` steps from step ``first``; returns the memory figures after the last backward and after its step,
    and the ``memory_report`` line after the last backward."""
    report: dict[str, Any] = {}
    for step in range(first, first + count):
        loss = engine(**batch(step, rank, size)).loss
        engine.backward(loss)
        report["after_backward"] = memory_stats(engine)
        report["line"] = memory_line(report["after_backward"])  # what scripts/train.py prints per rank
        engine.step()
    report["after_step"] = memory_stats(engine)
    return report


def moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], names: set[str]) -> list[str]:
    """Which of ``names`` differ between two snapshots."""
    return sorted(name for name in names if not torch.equal(before[name], after[name]))


def late_unfreeze(engine: Any, phases: Any, rank: int, size: int) -> dict[str, Any]:
    """Unfreeze phase 1 on the live engine WITHOUT the guard, train ``LATE_STEPS`` steps, report what moved."""
    late = set(phases.plans[1].trainable) - set(phases.plans[0].trainable)
    before = gathered_parameters(engine)
    phases.advance(SWITCH_STEP, 0.0)  # what a phase change does without check_phase_change
    error = None
    try:
        train_steps(engine, SWITCH_STEP, LATE_STEPS, rank, size)
    except Exception:  # recorded: the test asserts there was none
        error = traceback.format_exc()[-2000:]
    after = gathered_parameters(engine)
    return {
        "tensors": sorted(late),
        "error": error,
        "late_requires_grad": all(p.requires_grad for n, p in engine.module.named_parameters() if n in late),
        "late_moved": moved(before, after, late),
        "head_moved": moved(before, after, set(phases.plans[0].trainable)),
    }


def rebuilt(out: Path, stage: int, rank: int, size: int) -> dict[str, Any]:
    """The fix the refusal names: a fresh model with the exported delta loaded, a new engine at phase 1, steps."""
    engine, phases = initialize(
        load_delta(tiny_bert(), out / "delta"), RECIPE, ds_config(stage), lr=LEARNING_RATE, phase=1
    )
    before = gathered_parameters(engine)
    train_steps(engine, SWITCH_STEP, LATE_STEPS, rank, size)
    after = gathered_parameters(engine)
    return {
        "phase": phases.phase,
        "optimized": sorted(optimized_names(engine)),
        "moved": moved(before, after, set(before)),
    }


def run(out: Path, stage: int) -> None:
    """The whole run of the module docstring; every rank calls it."""
    import deepspeed
    import torch.distributed as dist

    # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel (g++, about 3 minutes on two busy
    # cores) at init unless it was built at install (DS_BUILD_SHM_COMM=1); gloo does all communication without it.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    engine, phases = initialize(tiny_bert(), RECIPE, ds_config(stage), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    partitions = zero3_partitions(engine.module)
    memory = train_steps(engine, 0, SWITCH_STEP, rank, size)
    assert phases.should_advance(SWITCH_STEP, 0.0)
    flags = [p.requires_grad for p in engine.module.parameters()]
    refusal = None
    try:
        advance_phase(engine, phases, SWITCH_STEP)
    except RecipeError as error:
        refusal = str(error)
    flags_kept = flags == [p.requires_grad for p in engine.module.parameters()] and phases.phase == 0
    trained = gathered_parameters(engine)
    rank_dir(out, rank).mkdir(parents=True, exist_ok=True)
    save_file(trained, str(rank_dir(out, rank) / SNAPSHOT))
    save_checkpoint(engine, out / "ckpt-trainable", tag=TAG)
    engine.save_checkpoint(str(out / "ckpt-full"), tag=TAG)
    engine.load_checkpoint(str(out / "ckpt-trainable"), tag=TAG, load_module_strict=False)
    reload_equal = all(torch.equal(trained[name], value) for name, value in gathered_parameters(engine).items())
    export_delta(engine, out / "delta")
    inner = engine.optimizer.optimizer
    result = dict(
        stage=stage,
        optimized=sorted(optimized_names(engine)),
        zero3_partitions=partitions,
        optimizer_state_elements=sum(v.numel() for state in inner.state.values() for v in state.values() if v.dim()),
        memory=memory,
        refusal=refusal,
        flags_kept=flags_kept,
        reload_equal=reload_equal,
        late_unfreeze=late_unfreeze(engine, phases, rank, size),
        rebuilt=rebuilt(out, stage, rank, size),
    )
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
        write_result(out, rank, size, engine.module, **result)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``deepspeed_train.py --out DIR --stage {2,3}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--stage", type=int, choices=(2, 3), required=True)
    args = parser.parse_args(argv)
    run(args.out, args.stage)


if __name__ == "__main__":
    main()
