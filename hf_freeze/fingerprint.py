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

Sharded models (FSDP2, FSDP1, DeepSpeed ZeRO-3) hold no whole tensor on any rank, so their samples cannot be
read after sharding without gathering the frozen weights. :func:`record_base_samples` keeps every tensor's
sample (a few KB each) on the bare model before it is sharded; :func:`fingerprint` of a sharded model is then
computed from those records, for exactly the tensors the caller keeps, and equals the fingerprint of the same
model unsharded. Frozen tensors never change, and tensors that trained are in the delta and never hashed, so
records taken before training stay valid for every phase.

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
from hf_freeze.names import canonical_name, named_tensors, unwrap_model
from hf_freeze.sharding import is_sharded

SAMPLE_ELEMENTS = 4096
ALGORITHM = f"sha256-strided-{SAMPLE_ELEMENTS}"
_RECORD_ATTR = "_hf_freeze_base_samples"

# What a fingerprint hashes for one tensor: its dtype (``str(torch.float32)``), shape and sample bytes.
Record = tuple[str, tuple[int, ...], bytes]

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


def tensor_record(name: str, tensor: torch.Tensor) -> Record:
    """What the fingerprint hashes for ``tensor``: dtype, shape and sample; a meta tensor is a DeltaError."""
    if tensor.is_meta:
        raise DeltaError(
            f"Tensor '{name}' is on the meta device (not loaded, or offloaded), so the base fingerprint cannot "
            "be computed; load the base weights fully, or pass force=True to skip the base check."
        )
    return str(tensor.dtype), tuple(tensor.shape), tensor_sample(tensor)


def fingerprint_records(records: Mapping[str, Record]) -> dict[str, Any]:
    """The fingerprint of per-tensor records (name to :func:`tensor_record`): algorithm, digest, tensor count."""
    digest = hashlib.sha256()
    for name in sorted(records):
        dtype, shape, sample = records[name]
        digest.update(json.dumps([name, dtype, list(shape)]).encode())
        digest.update(sample)
    return {"algorithm": ALGORITHM, "digest": digest.hexdigest(), "tensors": len(records)}


def fingerprint_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The fingerprint of ``tensors`` (name to tensor, each tensor once): algorithm, digest, tensor count."""
    return fingerprint_records({name: tensor_record(name, tensors[name]) for name in sorted(tensors)})


def fingerprint(model: torch.nn.Module, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The base fingerprint of ``model``: all its state tensors except those named (by any alias) in ``exclude``.

    A sharded model is fingerprinted from the samples recorded before sharding (:func:`record_base_samples`).
    """
    if is_sharded(model):
        return _recorded_fingerprint(model, exclude)
    entries = state_tensors(model)
    excluded = {id(entries[name]) for name in exclude if name in entries}
    kept = {name: t for name, t in unique_tensors(entries).items() if id(t) not in excluded}
    return fingerprint_tensors(kept)


def record_base_samples(model: torch.nn.Module) -> None:
    """Keep, on the bare model, what the fingerprint needs of every state tensor; call it before sharding.

    Per tensor (each tied tensor once, under its first canonical name): dtype, shape, whether it is a
    parameter, and its sample of at most :data:`SAMPLE_ELEMENTS` elements (a 70B model: about 12 MB of host
    memory); plus every alias's first name. Tensors on the meta device (not loaded on this rank, as with
    low-memory loading on ranks other than 0) get no sample; a fingerprint that needs one raises a DeltaError.
    Recording an already sharded model changes nothing.
    """
    if is_sharded(model):
        return
    entries = state_tensors(model)
    unique = unique_tensors(entries)
    first = {id(tensor): name for name, tensor in unique.items()}
    tensors = {
        name: {
            "dtype": str(tensor.dtype),
            "shape": tuple(tensor.shape),
            "param": isinstance(tensor, torch.nn.Parameter),
            "sample": None if tensor.is_meta else tensor_sample(tensor),
        }
        for name, tensor in unique.items()
    }
    aliases = {name: first[id(tensor)] for name, tensor in entries.items()}
    setattr(unwrap_model(model), _RECORD_ATTR, {"tensors": tensors, "aliases": aliases})


def base_samples(model: torch.nn.Module) -> dict[str, Any]:
    """What :func:`record_base_samples` kept for ``model``: ``tensors`` (first name to dtype, shape, param,
    sample) and ``aliases`` (every canonical name to its tensor's first name). A DeltaError if nothing was kept."""
    recorded = getattr(unwrap_model(model), _RECORD_ATTR, None)
    if recorded is None:
        raise DeltaError(
            f"The {type(unwrap_model(model)).__name__} is sharded and its base samples were not recorded, so "
            "its base tensors cannot be described without gathering the frozen weights; call "
            "hf_freeze.fingerprint.record_base_samples(model) before sharding (FreezeTrainer, FreezeController "
            "and hf_freeze.fsdp.shard_model do), or pass force=True to skip the base check."
        )
    return recorded


def recorded_state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Stand-ins for :func:`state_tensors` of a sharded model: meta tensors of the recorded dtypes and shapes
    under every canonical name (tied aliases share one), parameters as ``nn.Parameter`` without grad."""
    recorded = base_samples(model)
    stand_ins: dict[str, torch.Tensor] = {}
    for name, spec in recorded["tensors"].items():
        dtype = getattr(torch, spec["dtype"].removeprefix("torch."))
        tensor = torch.empty(spec["shape"], dtype=dtype, device="meta")
        stand_ins[name] = torch.nn.Parameter(tensor, requires_grad=False) if spec["param"] else tensor
    return {alias: stand_ins[name] for alias, name in recorded["aliases"].items()}


def _recorded_fingerprint(model: torch.nn.Module, exclude: Iterable[str]) -> dict[str, Any]:
    """The fingerprint of a sharded model from its recorded samples, leaving out ``exclude`` (any alias)."""
    recorded = base_samples(model)
    aliases = recorded["aliases"]
    excluded = {aliases.get(name, name) for name in exclude}
    kept = {name: spec for name, spec in recorded["tensors"].items() if name not in excluded}
    missing = [name for name, spec in kept.items() if spec["sample"] is None]
    if missing:
        raise DeltaError(
            f"Tensor '{missing[0]}' was on the meta device when the base samples were recorded on this rank, so "
            "the base fingerprint cannot be computed here; record them where the base weights are loaded "
            "(rank 0), or pass force=True to skip the base check."
        )
    return fingerprint_records({name: (spec["dtype"], spec["shape"], spec["sample"]) for name, spec in kept.items()})


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
