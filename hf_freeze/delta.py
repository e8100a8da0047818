"""Delta checkpoints: write only what trained, then verify and read it back onto a base (DESIGN section 6).

A delta folder holds ``delta.safetensors`` (or HF-style shards with an index), ``delta_config.json`` and a
``README.md`` model card. ``delta_config.json`` is authoritative: it lists every tensor with its dtype and
shape, every file with its size and SHA-256, the base (name, revision, model class, config and its hash) and
the base fingerprint (:mod:`hf_freeze.fingerprint`). Reading never unpickles: tensors come from safetensors,
metadata from JSON. Every check runs before the model is touched, so a refused delta leaves it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
from transformers.utils import cached_file

from hf_freeze.apply import applied_recipe
from hf_freeze.errors import DeltaError
from hf_freeze.fingerprint import (
    ALGORITHM,
    base_config,
    base_samples,
    config_hash,
    fingerprint,
    recorded_state_tensors,
    state_tensors,
    unique_tensors,
)
from hf_freeze.names import unwrap_model
from hf_freeze.sharding import is_sharded
from hf_freeze.version import __version__

FORMAT_VERSION = 1
CONFIG_NAME = "delta_config.json"
INDEX_NAME = "delta.safetensors.index.json"
README_NAME = "README.md"
_WEIGHTS_PATTERN = "delta{suffix}.safetensors"
_BAD_NAME_CHARS = re.compile(r"[/\\:\x00-\x1f]")
_FIELDS: dict[str, tuple[type, ...]] = {
    "format_version": (int,),
    "hf_freeze_version": (str,),
    "base": (dict,),
    "base.name_or_path": (str,),
    "base.revision": (str, type(None)),
    "base.model_class": (str,),
    "base.config": (dict,),
    "base.config_hash": (str,),
    "fingerprint": (dict,),
    "fingerprint.algorithm": (str,),
    "fingerprint.digest": (str,),
    "fingerprint.tensors": (int,),
    "recipe": (dict, type(None)),
    "phase": (int, type(None)),
    "tensors": (dict,),
    "aliases": (dict,),
    "files": (dict,),
}


@dataclass(frozen=True)
class Delta:
    """A delta read from ``path`` and verified against a model: its config and its tensors (CPU)."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def aliases(self) -> dict[str, str]:
        """Tied alias name to the name its tensor is stored under."""
        return self.config["aliases"]


# ---------------------------------------------------------------------------------------------- writing


def save_delta(
    model: torch.nn.Module,
    path: str | Path,
    *,
    recipe: Mapping[str, Any] | None = None,
    max_shard_size: int | str = "5GB",
    base_model: str | None = None,
    tensors: Mapping[str, torch.Tensor] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> Path:
    """Write the tensors of ``model`` that trained into the delta folder ``path``, atomically; return it.

    The delta holds every parameter with ``requires_grad=True`` (a tied tensor once, under its first canonical
    name), the persistent buffers of modules with a trainable parameter of their own, and every tensor the
    base checkpoint lacks (a new task head), all under canonical names, so wrapped models (DDP, PEFT,
    ``torch.compile``) save the same delta as bare ones. ``recipe`` defaults to the recipe applied to
    ``model``; ``base_model`` overrides the base name recorded from ``model.config._name_or_path``. A previous
    delta at ``path`` stays intact until the new one is complete.

    A sharded model holds no tensor whole on any rank: :func:`hf_freeze.fsdp.save_sharded_delta` gathers the
    delta and passes it as ``tensors`` (full values by canonical name, each tensor once) with ``aliases``
    (tied alias to stored name); given, they are the delta as it is.
    """
    bare = unwrap_model(model)
    if tensors is None:
        entries = state_tensors(model)
        names = _delta_names(model, entries, _base_checkpoint_keys(bare, entries))
        tensors = {name: entries[name] for name in names}
        stored = {id(entries[name]): name for name in names}
        aliases = {name: stored[id(t)] for name, t in entries.items() if id(t) in stored and stored[id(t)] != name}
    if not tensors:
        raise DeltaError(
            f"Nothing in the {type(bare).__name__} is trainable, so a delta at {path} would be empty; "
            "apply a recipe (or set requires_grad) before saving."
        )
    tensors = {name: _cpu_copy(tensor) for name, tensor in tensors.items()}
    config = _delta_config(model, bare, tensors, dict(aliases or {}), recipe, base_model)
    target = Path(path)
    with atomic_directory(target, marker=CONFIG_NAME) as tmp:
        config["files"] = _write_tensors(tmp, tensors, max_shard_size)
        _write_json(tmp / CONFIG_NAME, config)
        (tmp / README_NAME).write_text(model_card(config, target), encoding="utf-8")
    return target


def _delta_names(model: torch.nn.Module, entries: dict[str, torch.Tensor], base_keys: set[str] | None) -> list[str]:
    """First names of the tensors a delta holds: trainable, buffers of trained modules, absent from base."""
    unique = unique_tensors(entries)
    first_name = {id(tensor): name for name, tensor in unique.items()}
    chosen = [name for name, t in unique.items() if isinstance(t, torch.nn.Parameter) and t.requires_grad]
    chosen += [first_name[id(buffer)] for buffer in _trained_module_buffers(model)]
    if base_keys is not None:
        in_base = {id(entries[key]) for key in base_keys if key in entries}
        chosen += [name for name, tensor in unique.items() if id(tensor) not in in_base]
    return list(dict.fromkeys(chosen))


def sharded_delta_names(model: torch.nn.Module, trainable: Iterable[str]) -> list[str]:
    """The tensors :func:`save_delta` would choose for a sharded model whose trainable parameters are ``trainable``.

    The same choice as for a whole model (trainable parameters, persistent buffers of modules with a trainable
    parameter of their own, tensors the base lacks), made from the names recorded before sharding
    (:func:`hf_freeze.fingerprint.record_base_samples`), since a sharded model's own names and flags can be
    those of its engine (FSDP1's flat parameters). ``trainable`` are canonical names, any alias.
    """
    entries = recorded_state_tensors(model)
    first = base_samples(model)["aliases"]
    chosen = list(dict.fromkeys(first[name] for name in trainable if name in first))
    trained = set(chosen)
    modules = {alias.rpartition(".")[0] for alias, name in first.items() if name in trained}
    unique = [name for alias, name in first.items() if alias == name]
    chosen += [
        name
        for name in unique
        if not isinstance(entries[name], torch.nn.Parameter) and name.rpartition(".")[0] in modules
    ]
    base_keys = _base_checkpoint_keys(unwrap_model(model), entries)
    if base_keys is not None:
        in_base = {first[key] for key in base_keys if key in first}
        chosen += [name for name in unique if name not in in_base]
    return list(dict.fromkeys(chosen))


def _trained_module_buffers(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Persistent buffers of modules that have a trainable parameter of their own."""
    for module in model.modules():
        if any(param.requires_grad for param in module.parameters(recurse=False)):
            for name, buffer in module._buffers.items():
                if buffer is not None and name not in module._non_persistent_buffers_set:
                    yield buffer


def _base_checkpoint_keys(bare: torch.nn.Module, entries: Mapping[str, Any]) -> set[str] | None:
    """Canonical names of the tensors the base checkpoint holds (headers only), or None if it is not at hand.

    ``entries`` are the model's canonical tensor names (any mapping keyed by them).

    Checkpoint keys go through transformers' own renamings (legacy names, fused MoE experts) and its
    ``base_model_prefix`` rule, so a ``BertModel`` checkpoint's ``embeddings.x`` matches ``bert.embeddings.x``.
    """
    config = getattr(bare, "config", None)
    source = getattr(config, "_name_or_path", "")
    if not source:
        return None
    keys = _checkpoint_keys(source, getattr(config, "_commit_hash", None))
    if keys is None:
        return None
    transforms = get_model_conversion_mapping(bare)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    known = dict.fromkeys(entries, True)
    prefix = getattr(bare, "base_model_prefix", None) or None
    return {rename_source_key(key, renamings, converters, prefix, known)[0] for key in keys}


def _checkpoint_keys(source: str, revision: str | None) -> list[str] | None:
    """Tensor names in the safetensors checkpoint at ``source`` (folder or cached hub id), read from headers."""
    try:
        index = _cached(source, "model.safetensors.index.json", revision)
        if index is not None:
            return list(json.loads(Path(index).read_text())["weight_map"])
        single = _cached(source, "model.safetensors", revision)
        if single is None:
            return None
        with safe_open(single, framework="pt") as handle:
            return list(handle.keys())
    except OSError:  # the base is gone or is not a valid folder or hub id: nothing to compare with
        return None


def _cached(source: str, filename: str, revision: str | None) -> str | None:
    """``filename`` of the local folder or locally cached hub repository ``source``; never downloads."""
    return cached_file(
        source,
        filename,
        revision=revision,
        local_files_only=True,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU clone of ``tensor``, detached from autograd."""
    return tensor.detach().to(device="cpu", memory_format=torch.contiguous_format, copy=True)


def _delta_config(
    model: torch.nn.Module,
    bare: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    aliases: dict[str, str],
    recipe: Mapping[str, Any] | None,
    base_model: str | None,
) -> dict[str, Any]:
    """The JSON metadata of a delta, without its file list."""
    applied = applied_recipe(model) or {}
    return {
        "format_version": FORMAT_VERSION,
        "hf_freeze_version": __version__,
        "base": _base_record(bare, base_model),
        "fingerprint": fingerprint(model, exclude=tensors),
        "recipe": dict(recipe) if recipe is not None else applied.get("recipe"),
        "phase": applied.get("phase"),
        "tensors": {name: {"dtype": dtype_name(t.dtype), "shape": list(t.shape)} for name, t in tensors.items()},
        "aliases": aliases,
    }


def _base_record(bare: torch.nn.Module, base_model: str | None) -> dict[str, Any]:
    """What identifies the base: name, revision, model class, full config (to rebuild the head) and its hash."""
    config = getattr(bare, "config", None)
    config_dict = _config_dict(bare)
    return {
        "name_or_path": base_model or getattr(config, "_name_or_path", "") or "",
        "revision": getattr(config, "_commit_hash", None),
        "model_class": type(bare).__name__,
        "config": config_dict,
        "config_hash": config_hash(config_dict),
    }


def _write_tensors(folder: Path, tensors: dict[str, torch.Tensor], max_shard_size: int | str) -> dict[str, Any]:
    """Write ``tensors`` as one file or HF-style shards plus index; return each file's size and SHA-256."""
    split = split_torch_state_dict_into_shards(
        tensors, filename_pattern=_WEIGHTS_PATTERN, max_shard_size=max_shard_size
    )
    files: dict[str, Any] = {}
    for filename, names in split.filename_to_tensors.items():
        file = folder / filename
        save_file({name: tensors[name] for name in names}, file, metadata={"format": "pt"})
        files[filename] = {"size": file.stat().st_size, "sha256": _sha256(file)}
    if split.is_sharded:
        _write_json(folder / INDEX_NAME, {"metadata": split.metadata, "weight_map": split.tensor_to_filename})
    return files


def _write_json(file: Path, data: Mapping[str, Any]) -> None:
    file.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``: how a delta records dtypes."""
    return str(dtype).removeprefix("torch.")


@contextmanager
def atomic_directory(target: Path, *, marker: str) -> Iterator[Path]:
    """Yield a new temporary folder next to ``target``; when the block succeeds it replaces ``target``.

    If the block raises (or the process dies in it), ``target`` is untouched and the temporary folder is
    removed (or left as a hidden ``.NAME.tmp-*`` sibling). The swap is two renames on one file system; only a
    kill between them leaves the old folder under a hidden ``.NAME.old-*`` name. An existing ``target`` must
    be empty or an earlier output (holding ``marker``), so no unrelated folder is replaced.
    """
    if target.is_file() or (target.is_dir() and any(target.iterdir()) and not (target / marker).is_file()):
        raise DeltaError(
            f"Refusing to write into {target}: it exists and is not an earlier output (it has no {marker}); "
            "choose a new or empty folder."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    tmp.mkdir()
    try:
        yield tmp
        _swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(new: Path, target: Path) -> None:
    """Replace the folder ``target`` by ``new`` with renames, putting the old one back if the second fails."""
    if not target.exists():
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
    target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def model_card(config: Mapping[str, Any], path: Path) -> str:
    """The README.md of a delta: base, recipe, what trained, how to load it."""
    base, recipe, fp = config["base"], config["recipe"] or {}, config["fingerprint"]
    rows = [f"| `{name}` | {spec['dtype']} | {tuple(spec['shape'])} |" for name, spec in config["tensors"].items()]
    aliases = "".join(f"- `{alias}` is tied to `{name}`\n" for alias, name in config["aliases"].items())
    revision = f", revision `{base['revision']}`" if base["revision"] else ""
    phase = f", phase {config['phase']}" if config["phase"] is not None else ""
    description = f": {recipe['description']}" if recipe.get("description") else ""
    if base["name_or_path"]:
        load = f'from hf_freeze.delta import load_model_with_delta\nmodel = load_model_with_delta("{path}")\n'
    else:
        load = (
            f'from hf_freeze.delta import load_delta\nload_delta(model, "{path}")  # model: the base, from its config\n'
        )
    return (
        f"# hf_freeze delta for `{base['name_or_path'] or base['model_class']}`\n\n"
        f"Only the tensors that trained, written by hf_freeze {config['hf_freeze_version']}; "
        "the frozen weights stay in the base model.\n\n"
        f"- Base: `{base['name_or_path'] or '(built from a config)'}`{revision}, class `{base['model_class']}`\n"
        f"- Recipe: `{recipe.get('name', 'none recorded')}`{phase}{description}\n"
        f"- Trained: {len(rows)} tensors; base fingerprint `{fp['digest'][:16]}` "
        f"over {fp['tensors']} frozen tensors\n\n"
        f"## Load\n\n```python\n{load}```\n\n"
        f"Check it against a base first: `hf-freeze verify {path} --base BASE`.\n\n"
        "## Tensors\n\n| name | dtype | shape |\n| --- | --- | --- |\n" + "\n".join(rows) + "\n\n" + aliases
    )


# ---------------------------------------------------------------------------------------------- reading


def read_delta_config(path: str | Path) -> dict[str, Any]:
    """The checked ``delta_config.json`` of the delta folder ``path`` (fields, types, names, format version)."""
    folder = Path(path)
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise DeltaError(f"{folder} is not a delta folder: it has no {CONFIG_NAME}; pass the folder save_delta wrote.")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DeltaError(f"{file} is not valid JSON ({error}); save the delta again.") from None
    if not isinstance(config, dict):
        raise DeltaError(f"{file} does not hold a JSON object; save the delta again.")
    for field, types in _FIELDS.items():
        _require_field(config, field, types, file)
    _check_version(config["format_version"], file)
    _check_entries(config, file)
    return config


def _require_field(config: dict[str, Any], field: str, types: tuple[type, ...], file: Path) -> None:
    """The dotted ``field`` of ``config`` must exist and have one of ``types``."""
    value: Any = config
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            raise DeltaError(f"{file} lacks the field '{field}'; save the delta again with save_delta.")
        value = value[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise DeltaError(f"{file} has a field '{field}' that is not {expected}; save the delta again with save_delta.")


def _check_version(version: int, file: Path) -> None:
    if version > FORMAT_VERSION:
        raise DeltaError(
            f"{file} has format_version {version}, newer than the {FORMAT_VERSION} hf_freeze {__version__} "
            "reads; upgrade hf_freeze."
        )
    if version < 1:
        raise DeltaError(f"{file} has an invalid format_version {version}; save the delta again.")


def _check_entries(config: dict[str, Any], file: Path) -> None:
    """Tensor specs, alias and file entries: well-formed, with safe names."""
    for name, spec in config["tensors"].items():
        _check_tensor_name(name, file)
        if not _valid_spec(spec):
            raise DeltaError(f"{file} records no valid dtype and shape for tensor '{name}'; save the delta again.")
    for alias, name in config["aliases"].items():
        _check_tensor_name(alias, file)
        if name not in config["tensors"]:
            raise DeltaError(f"{file} ties alias '{alias}' to '{name}', which it does not list; save the delta again.")
    for filename, record in config["files"].items():
        _check_file_name(filename, file)
        if (
            not isinstance(record, dict)
            or type(record.get("size")) is not int
            or not isinstance(record.get("sha256"), str)
        ):
            raise DeltaError(f"{file} records no valid size and sha256 for {filename}; save the delta again.")


def _valid_spec(spec: Any) -> bool:
    """``{"dtype": a torch dtype name, "shape": a list of non-negative ints}``."""
    if not isinstance(spec, dict):
        return False
    shape, dtype = spec.get("shape"), spec.get("dtype")
    valid_shape = isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)
    return valid_shape and isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype)


def _check_tensor_name(name: Any, where: Path) -> None:
    """Tensor names are dot-separated components, none empty, none holding a path separator or control."""
    if not isinstance(name, str) or not all(name.split(".")) or _BAD_NAME_CHARS.search(name):
        raise DeltaError(
            f"{where} names a tensor {name!r} with a path-like or empty component; tensor names look like "
            "'classifier.weight', so save the delta again with save_delta."
        )


def _check_file_name(name: str, file: Path) -> None:
    """Tensor files are plain ``.safetensors`` names inside the delta folder."""
    if Path(name).name != name or name in (".", "..") or "\\" in name or not name.endswith(".safetensors"):
        raise DeltaError(
            f"{file} lists a tensor file {name!r} that is not a plain .safetensors name inside the folder; "
            "save the delta again with save_delta."
        )


def read_delta(model: torch.nn.Module, path: str | Path, *, force: bool = False) -> Delta:
    """Read the delta at ``path`` after checking it fits ``model``, without touching ``model``.

    Checks, in order: the config; that every tensor and alias is a parameter or persistent buffer of ``model``
    with the recorded shape and dtype; the base (config hash and fingerprint; skipped with ``force=True``);
    each file's size and SHA-256; the safetensors headers and contents against the config. A sharded model is
    checked against what was recorded of it before sharding (:func:`hf_freeze.fingerprint.record_base_samples`).
    """
    folder = Path(path)
    config = read_delta_config(folder)
    file = folder / CONFIG_NAME
    entries = recorded_state_tensors(model) if is_sharded(model) else state_tensors(model)
    _check_against_model(config, entries, type(unwrap_model(model)).__name__, file)
    if not force:
        _check_base(model, config, folder)
    tensors = _read_tensor_files(folder, config["files"])
    _check_read_tensors(tensors, config["tensors"], folder)
    return Delta(folder, config, tensors)


def _check_against_model(
    config: dict[str, Any], entries: dict[str, torch.Tensor], model_class: str, file: Path
) -> None:
    """Every name a tensor of the model, with the shape and dtype the delta records."""
    specs = config["tensors"]
    pairs = [(name, name) for name in specs] + list(config["aliases"].items())
    for name, stored in pairs:
        if name not in entries:
            raise DeltaError(
                f"{file} holds tensor '{name}', which is not a parameter or persistent buffer of the "
                f"{model_class} it is loaded into; load it into a {config['base']['model_class']} wrapped as it "
                "was when saved (load_model_with_delta builds one)."
            )
        live, spec = entries[name], specs[stored]
        if list(live.shape) != spec["shape"] or dtype_name(live.dtype) != spec["dtype"]:
            raise DeltaError(
                f"{file} records tensor '{name}' as {spec['dtype']} {spec['shape']} but the model has "
                f"{dtype_name(live.dtype)} {list(live.shape)}; build the model with the delta's config and dtype "
                "(load_model_with_delta does)."
            )


def _check_base(model: torch.nn.Module, config: dict[str, Any], folder: Path) -> None:
    """The model's config hash and fingerprint equal the ones recorded for the delta's base."""
    base = config["base"]
    where = f"the base it was saved from ({base['name_or_path'] or base['model_class']})"
    live_config = _config_dict(model)
    if config_hash(live_config) != base["config_hash"]:
        recorded, live = base_config(base["config"]), base_config(live_config)
        fields = sorted(key for key in recorded.keys() | live.keys() if recorded.get(key) != live.get(key))
        raise DeltaError(
            f"Delta {folder} was made for another base: the model's config differs in "
            f"{', '.join(fields[:5]) or 'its hash'}; load it onto {where}, or pass force=True (merge --force) "
            "to load it anyway."
        )
    recorded_print = config["fingerprint"]
    if recorded_print["algorithm"] != ALGORITHM:
        raise DeltaError(
            f"Delta {folder} has a base fingerprint of kind {recorded_print['algorithm']!r}, which hf_freeze "
            f"{__version__} cannot compute; upgrade hf_freeze, or pass force=True (merge --force) to load it "
            "anyway."
        )
    live_print = fingerprint(model, exclude=config["tensors"])
    if live_print["digest"] != recorded_print["digest"]:
        raise DeltaError(
            f"Delta {folder} was made for another base: the fingerprint of the model's "
            f"{live_print['tensors']} frozen tensors differs from that of {where}; load the same base "
            "weights in the same dtype, or pass force=True (merge --force) to load it anyway."
        )


def _config_dict(model: torch.nn.Module) -> dict[str, Any]:
    config = getattr(unwrap_model(model), "config", None)
    return config.to_dict() if config is not None else {}


def _read_tensor_files(folder: Path, files: dict[str, Any]) -> dict[str, torch.Tensor]:
    """All tensors of the delta's files, after checking each file's size and SHA-256."""
    tensors: dict[str, torch.Tensor] = {}
    for filename, record in files.items():
        file = folder / filename
        if not file.is_file():
            raise DeltaError(f"Delta {folder} lacks its tensor file {filename}; copy the whole delta folder again.")
        size = file.stat().st_size
        if size != record["size"]:
            raise DeltaError(
                f"{file} has {size} bytes but {CONFIG_NAME} records {record['size']}: it is truncated or "
                "corrupted; copy or save the delta again."
            )
        if _sha256(file) != record["sha256"]:
            raise DeltaError(
                f"{file} is corrupted: its SHA-256 differs from the one {CONFIG_NAME} records; copy or save the "
                "delta again."
            )
        for name, tensor in _read_safetensors(file).items():
            _check_tensor_name(name, file)
            if name in tensors:
                raise DeltaError(f"Delta {folder} holds tensor '{name}' in two files; save the delta again.")
            tensors[name] = tensor
    return tensors


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file; a malformed file is a DeltaError."""
    try:
        with safe_open(file, framework="pt", device="cpu") as handle:
            names = handle.keys()
            return {name: handle.get_tensor(name) for name in names}
    except (SafetensorError, OSError) as error:
        raise DeltaError(f"{file} is not a valid safetensors file ({error}); copy or save the delta again.") from None


def _check_read_tensors(tensors: dict[str, torch.Tensor], specs: dict[str, Any], folder: Path) -> None:
    """The files hold exactly the tensors the config lists, with the recorded shapes and dtypes."""
    for name, tensor in tensors.items():
        if name not in specs:
            raise DeltaError(
                f"Delta {folder} holds tensor '{name}' that {CONFIG_NAME} does not list; save the delta again."
            )
        spec = specs[name]
        if list(tensor.shape) != spec["shape"] or dtype_name(tensor.dtype) != spec["dtype"]:
            raise DeltaError(
                f"Delta {folder} stores tensor '{name}' as {dtype_name(tensor.dtype)} {list(tensor.shape)} but "
                f"{CONFIG_NAME} records {spec['dtype']} {spec['shape']}; save the delta again."
            )
    for name in specs:
        if name not in tensors:
            raise DeltaError(
                f"Delta {folder} lists tensor '{name}' in {CONFIG_NAME} but none of its files holds it; "
                "save the delta again."
            )


# ---------------------------------------------------------------------------------------------- loading


def copy_into(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], aliases: Mapping[str, str]) -> None:
    """Copy each of ``tensors`` in place into the model tensor of that canonical name and of its aliases.

    The model keeps its dtype and device. Names must have been checked (``read_delta`` does).
    """
    entries = state_tensors(model)
    targets: dict[str, list[str]] = {name: [name] for name in tensors}
    for alias, name in aliases.items():
        if name in targets:
            targets[name].append(alias)
    with torch.no_grad():
        for name, value in tensors.items():
            for target in unique_tensors({alias: entries[alias] for alias in targets[name]}).values():
                target.copy_(value)


def load_delta(model: torch.nn.Module, path: str | Path, *, force: bool = False) -> torch.nn.Module:
    """Verify the delta at ``path`` against ``model``, then copy it into ``model`` in place; return ``model``.

    Refuses with a :class:`DeltaError`, leaving ``model`` unchanged, a folder that is not a delta, a malformed
    or newer-format config, another base (``force=True`` skips only this check), tensors that are missing,
    unexpected, path-like, or of the wrong shape or dtype, and truncated or corrupted files.
    """
    delta = read_delta(model, path, force=force)
    copy_into(model, delta.tensors, delta.aliases)
    return model


def build_base(config: Mapping[str, Any], base: str | None = None, **from_pretrained_kwargs: Any) -> torch.nn.Module:
    """The base model a delta config records, built with the recorded config (so the same head and labels)."""
    record = config["base"]
    source = base or record["name_or_path"]
    if not source:
        raise DeltaError(
            "The delta records no base model (it was saved from a model built from a config); pass base=PATH."
        )
    model_class = getattr(transformers, record["model_class"], None)
    if not hasattr(model_class, "from_pretrained"):
        raise DeltaError(
            f"The delta's model class {record['model_class']!r} is not a transformers model class; build the "
            "model yourself and call load_delta(model, path)."
        )
    if base is None and record["revision"]:
        from_pretrained_kwargs.setdefault("revision", record["revision"])
    model_config = model_class.config_class.from_dict(record["config"])
    return model_class.from_pretrained(source, config=model_config, **from_pretrained_kwargs)


def load_model_with_delta(
    path: str | Path, *, base: str | None = None, force: bool = False, **from_pretrained_kwargs: Any
) -> torch.nn.Module:
    """Build the delta's base (``base`` overrides the recorded name or path), load the delta, return it in eval mode.

    The result goes straight into ``transformers.pipeline(task, model=..., tokenizer=...)``.
    """
    model = build_base(read_delta_config(path), base, **from_pretrained_kwargs)
    return load_delta(model, path, force=force).eval()
