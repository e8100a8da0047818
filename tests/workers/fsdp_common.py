"""Shared by the FSDP workers: process group, the data split, a manual training loop, and rank outputs.

A sharded rank holds no whole tensor, so ranks do not write their parameters the way ``workers.common`` does:
the test gathers every parameter once (``get_model_state_dict`` with full tensors, frozen ones included, which
only a test wants) and rank 0 writes it. Every rank writes ``result.json`` last, atomically.

The data split makes two ranks equal to one process: step ``s`` uses rows ``[s*2B, (s+1)*2B)``; one process
takes them all, rank ``r`` of two takes its half ``[s*2B + r*B, s*2B + (r+1)*B)``. Dropout is off, and each
rank's loss is the mean over an equal share, so averaged gradients equal the one-process gradient.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from launch import WORKERS, launch_two_processes, rank_outputs
from safetensors.torch import save_file
from tiny import random_text_dataset
from torch import nn

from hf_freeze.fsdp import cpu_offload_works
from hf_freeze.memory import memory_stats
from hf_freeze.names import canonical_name
from hf_freeze.phases import PhaseController
from workers.common import RESULT, rank_dir

ROWS = 64
LEARNING_RATE = 1e-3
MAX_GRAD_NORM = 1.0


def init_gloo() -> tuple[int, int]:
    """Join the two-process gloo group ``accelerate launch`` set up; returns ``(rank, world_size)``."""
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def batches(per_step: int, steps: int, rank: int = 0, world_size: int = 1) -> list[dict[str, torch.Tensor]]:
    """This rank's batch of every step (module docstring): ``per_step`` rows per step over all ranks."""
    data = random_text_dataset(ROWS).with_format("torch")[:]
    share = per_step // world_size
    out = []
    for step in range(steps):
        start = step * per_step + rank * share
        out.append({key: data[key][start : start + share] for key in ("input_ids", "attention_mask", "labels")})
    return out


def clip_gradients(model: nn.Module) -> None:
    """Clip to ``MAX_GRAD_NORM`` over all ranks: FSDP1's own method (its flat gradients are local shards), else
    ``torch.nn.utils.clip_grad_norm_`` (which handles FSDP2's DTensor gradients)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP1

    if isinstance(model, FSDP1):
        model.clip_grad_norm_(MAX_GRAD_NORM)
    else:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], MAX_GRAD_NORM)


def train_loop(
    model: nn.Module, optimizer: torch.optim.Optimizer, data: list[dict[str, torch.Tensor]], phases: PhaseController
) -> tuple[list[float], list[int]]:
    """Forward, backward, clip, step, free grads, advance ``phases`` when due; returns the losses and the steps
    after which the phase changed."""
    losses, switched = [], []
    for step, batch in enumerate(data, start=1):
        loss = model(**batch).loss
        loss.backward()
        clip_gradients(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if phases.should_advance(step, 0.0):
            phases.advance(step, 0.0)
            switched.append(step)
    return losses, switched


def memory_with_gradients(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any]) -> dict[str, Any]:
    """``memory_stats`` while gradients exist: after one more forward and backward (no step; grads freed after)."""
    model(**batch).loss.backward()
    stats = memory_stats(model, optimizer)
    optimizer.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    return stats


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter, whole, by state-dict key (a collective under FSDP; rank 0 gets them, others nothing)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload_works(model))
    buffers = {canonical_name(name) for name, _ in model.named_buffers()}
    state = get_model_state_dict(model, options=options)
    if dist.get_rank() != 0:
        return {}
    return {name: tensor.contiguous() for name, tensor in state.items() if canonical_name(name) not in buffers}


def write_tensors(out: str | os.PathLike, rank: int, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """``out/rank{rank}/{name}.safetensors`` (nothing when ``tensors`` is empty, as on ranks other than 0)."""
    if tensors:
        folder = rank_dir(out, rank)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({key: value.contiguous() for key, value in tensors.items()}, str(folder / f"{name}.safetensors"))


def launch_worker(script: str, out: Path) -> Path:
    """Run ``tests/workers/{script} --out OUT`` on two ranks; returns ``out`` once both wrote ``result.json``
    (raises with the run's output otherwise)."""
    rank_outputs(launch_two_processes(WORKERS / script, "--out", str(out)), out, RESULT)
    return out


def read_results(out: Path) -> list[dict[str, Any]]:
    """Every rank's ``result.json``."""
    return [json.loads((rank_dir(out, rank) / RESULT).read_text()) for rank in range(2)]


def write_rank_result(out: str | os.PathLike, rank: int, world_size: int, **extra: Any) -> None:
    """``result.json`` of this rank, written last and atomically (its presence means the rank finished)."""
    folder = rank_dir(out, rank)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{RESULT}.tmp"
    tmp.write_text(json.dumps({"world_size": world_size, "rank": rank, **extra}, indent=1), encoding="utf-8")
    tmp.replace(Path(folder, RESULT))
