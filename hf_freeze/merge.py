"""Baking deltas into their base: one delta as a plain overwrite, several as task arithmetic."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from hf_freeze.delta import atomic_directory, copy_into, read_delta
from hf_freeze.errors import DeltaError
from hf_freeze.fingerprint import state_tensors


def merge_deltas(
    base_model: torch.nn.Module,
    deltas: Sequence[str | Path],
    weights: Sequence[float] | None = None,
    *,
    force: bool = False,
) -> torch.nn.Module:
    """Set each tensor of ``base_model`` that a delta holds to ``base + Σ wᵢ·(deltaᵢ − base)``; return the model.

    Sums run over the deltas that hold the tensor; ``weights`` default to 1 each, and a tensor held by one
    delta with weight 1 is that delta's tensor exactly. Every delta is verified against the unchanged base
    as :func:`~hf_freeze.delta.load_delta` does (``force=True`` skips the base check) before anything is
    written. Arithmetic runs in float64 (integer buffers are rounded back); the model keeps its dtypes.
    """
    weights = [1.0] * len(deltas) if weights is None else [float(w) for w in weights]
    if not deltas or len(weights) != len(deltas):
        raise DeltaError(
            f"merge got {len(deltas)} deltas and {len(weights)} weights; give at least one delta and one "
            "weight per delta."
        )
    read = [read_delta(base_model, path, force=force) for path in deltas]
    entries = state_tensors(base_model)
    merged: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name in dict.fromkeys(name for delta in read for name in delta.tensors):
        held = [(delta.tensors[name], w) for delta, w in zip(read, weights, strict=True) if name in delta.tensors]
        merged[name] = _combine(entries[name], held)
    for delta in read:
        aliases.update(delta.aliases)
    copy_into(base_model, merged, aliases)
    return base_model


def _combine(base: torch.Tensor, held: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """``base + Σ w·(value − base)`` in float64 (complex128 for complex), cast back to ``base``'s dtype."""
    if len(held) == 1 and held[0][1] == 1.0:
        return held[0][0]
    work = torch.promote_types(base.dtype, torch.float64)
    start = base.detach().to(device="cpu", dtype=work)
    total = start.clone()
    for value, weight in held:
        total += weight * (value.to(work) - start)
    if not (base.is_floating_point() or base.is_complex()):
        total = total.round()
    return total.to(base.dtype)


def save_merged(model: torch.nn.Module, path: str | Path) -> Path:
    """``model.save_pretrained(path)``, atomically: an interrupted save leaves an earlier output intact."""
    target = Path(path)
    with atomic_directory(target, marker="config.json") as tmp:
        model.save_pretrained(tmp)
    return target
