"""A cheap fingerprint of a base model, so a delta can tell whether it is loaded onto the base it was made for.

Design. A delta holds what trained; everything else in the model is the base, and training does not change
it. The fingerprint therefore covers exactly the tensors *not* in the delta, so the trained model and a freshly
loaded base give the same value. For each such tensor (every parameter and persistent buffer, a tied tensor
once under its first canonical name, in sorted name order) it hashes, with SHA-256, the name, the dtype, the
shape and the raw bytes of a fixed sample of at most ``SAMPLE_ELEMENTS`` elements taken at evenly spaced flat
indices ``i * numel // k``. The sample is gathered by index, never by flattening, so the cost per tensor is
bounded whatever the tensor's size or layout: a 70B model costs a few thousand tiny gathers and hashes a few
megabytes, in well under a second.

What it tells apart: any difference in the set of names, a dtype or a shape, and weights that differ at the
sampled elements, which is every element for tensors of at most ``SAMPLE_ELEMENTS`` elements and, for larger
ones, any base trained or initialised differently (two seeds, two checkpoints, another fine-tune), since such
weights differ nearly everywhere. What it cannot tell apart: two bases that differ only at elements between the
samples of a large tensor (a handful of edited weights), and the same weights loaded in another dtype reads as
another base. When everything trained, the fingerprint covers no tensor at all and checks nothing; the config
hash (:func:`config_hash`) and the delta's names, shapes and dtypes are still checked.

The config hash covers what defines the computation of the base: the model config without the fields that
describe a task, a run or the runtime (labels, dropout rates, dtype, cache and output switches, provenance).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from hf_freeze.errors import DeltaError
from hf_freeze.names import canonical_name, named_tensors

SAMPLE_ELEMENTS = 4096
ALGORITHM = f"sha256-strided-{SAMPLE_ELEMENTS}"

_RUN_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "_commit_hash",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "attn_implementation",
        "transformers_version",
        "architectures",
        "dtype",
        "torch_dtype",
        "id2label",
        "label2id",
        "num_labels",
        "problem_type",
        "finetuning_task",
        "task_specific_params",
        "use_cache",
        "return_dict",
        "output_attentions",
        "output_hidden_states",
        "gradient_checkpointing",
        "chunk_size_feed_forward",
    }
)


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer of ``model`` under its canonical name, tied aliases included.

    Parameters come first, in module order, so the first name of a tied tensor is the one ``named_parameters``
    meets first.
    """
    entries: dict[str, torch.Tensor] = dict(named_tensors(model))
    for module_name, module in model.named_modules(remove_duplicate=False):
        for buffer_name, buffer in module._buffers.items():
            if buffer is not None and buffer_name not in module._non_persistent_buffers_set:
                entries.setdefault(canonical_name(f"{module_name}.{buffer_name}".lstrip(".")), buffer)
    return entries


def unique_tensors(entries: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``entries`` with each tensor kept once, under the first name it appears with."""
    seen: set[int] = set()
    unique: dict[str, torch.Tensor] = {}
    for name, tensor in entries.items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            unique[name] = tensor
    return unique


def tensor_sample(tensor: torch.Tensor) -> bytes:
    """The raw bytes of at most ``SAMPLE_ELEMENTS`` evenly spaced elements of ``tensor`` (bounded cost)."""
    tensor = tensor.detach()
    if tensor.dim() == 0:
        tensor = tensor.reshape(1)
    numel = tensor.numel()
    if numel == 0:
        return b""
    count = min(numel, SAMPLE_ELEMENTS)
    flat = torch.arange(count, dtype=torch.int64) * numel // count
    values = tensor[torch.unravel_index(flat.to(tensor.device), tensor.shape)]
    return values.cpu().contiguous().view(torch.uint8).numpy().tobytes()


def fingerprint_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The fingerprint of ``tensors`` (name to tensor, each tensor once): algorithm, digest, tensor count."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor.is_meta:
            raise DeltaError(
                f"Tensor '{name}' is on the meta device (not loaded, or offloaded), so the base fingerprint cannot "
                "be computed; load the base weights fully, or pass force=True to skip the base check."
            )
        header = json.dumps([name, str(tensor.dtype), list(tensor.shape)])
        digest.update(header.encode())
        digest.update(tensor_sample(tensor))
    return {"algorithm": ALGORITHM, "digest": digest.hexdigest(), "tensors": len(tensors)}


def fingerprint(model: torch.nn.Module, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The base fingerprint of ``model``: all its state tensors except those named (by any alias) in ``exclude``."""
    entries = state_tensors(model)
    excluded = {id(entries[name]) for name in exclude if name in entries}
    kept = {name: t for name, t in unique_tensors(entries).items() if id(t) not in excluded}
    return fingerprint_tensors(kept)


def base_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a config dict (``config.to_dict()``) that defines the base: run and task fields removed."""
    kept: dict[str, Any] = {}
    for key, value in config.items():
        if key in _RUN_CONFIG_KEYS or "dropout" in key or key.endswith("pdrop"):
            continue
        kept[key] = base_config(value) if isinstance(value, Mapping) else value
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of :func:`base_config` of ``config``, as canonical JSON."""
    text = json.dumps(base_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
