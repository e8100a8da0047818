"""What a worker rank writes, and how tests read it back.

Each rank writes into ``OUT/rank{rank}/``: ``params.safetensors`` (every parameter after training, by its
name in the bare model), optional snapshots ``step-{N}.safetensors``, and last ``result.json`` (world size,
rank and whatever the worker adds). ``result.json`` is written last, atomically, so its presence means the
rank finished its work, whatever happens at process teardown (the ranks wait for each other after writing).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

RESULT = "result.json"
PARAMS = "params.safetensors"


def rank_dir(out: str | os.PathLike, rank: int) -> Path:
    """The folder of one rank's outputs."""
    return Path(out, f"rank{rank}")


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of every parameter of ``model``, by name (a tied tensor under each of its names)."""
    return {name: param.detach().cpu().clone().contiguous() for name, param in model.named_parameters()}


def save_parameters(model: nn.Module, file: str | os.PathLike) -> None:
    """Write every parameter of ``model`` to the safetensors ``file``."""
    Path(file).parent.mkdir(parents=True, exist_ok=True)
    save_file(parameters(model), str(file))


def write_result(out: str | os.PathLike, rank: int, world_size: int, model: nn.Module, **extra: Any) -> None:
    """Write the rank's final parameters, then ``result.json`` (``world_size``, ``rank`` and ``extra``); then
    wait for every rank to have written, so that one rank aborting at teardown cannot cut another's write short.
    """
    folder = rank_dir(out, rank)
    save_parameters(model, folder / PARAMS)
    tmp = folder / f".{RESULT}.tmp"
    tmp.write_text(json.dumps({"world_size": world_size, "rank": rank, **extra}, indent=1), encoding="utf-8")
    tmp.replace(folder / RESULT)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def read_result(out: str | os.PathLike, rank: int = 0) -> dict[str, Any]:
    """A rank's ``result.json``."""
    return json.loads((rank_dir(out, rank) / RESULT).read_text(encoding="utf-8"))


def read_parameters(out: str | os.PathLike, rank: int = 0, name: str = PARAMS) -> dict[str, torch.Tensor]:
    """A rank's saved parameters (``params.safetensors`` or a snapshot file such as ``step-3.safetensors``)."""
    return load_file(str(rank_dir(out, rank) / name))
