"""The delta subcommands of ``hf-freeze``: ``inspect``, ``verify`` and ``merge``."""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch

from hf_freeze.delta import build_base, read_delta, read_delta_config
from hf_freeze.merge import merge_deltas, save_merged


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``inspect``, ``verify`` and ``merge`` to the ``hf-freeze`` subcommands."""
    inspect = subparsers.add_parser("inspect", help="show a delta's base, recipe, tensors and sizes")
    inspect.add_argument("delta", help="delta folder written by save_delta")
    inspect.set_defaults(handler=run_inspect)

    verify = subparsers.add_parser("verify", help="check that a delta loads onto a base model")
    verify.add_argument("delta", help="delta folder written by save_delta")
    verify.add_argument("--base", required=True, help="base model folder or hub id")
    verify.set_defaults(handler=run_verify)

    merge = subparsers.add_parser("merge", help="bake deltas into a base and save a save_pretrained folder")
    merge.add_argument("--base", required=True, help="base model folder or hub id")
    merge.add_argument("--delta", required=True, action="append", help="delta folder (repeat to merge several)")
    merge.add_argument("--weights", type=_weights, help="comma-separated weight per delta, e.g. 0.5,0.5")
    merge.add_argument("--out", required=True, help="output folder (written atomically)")
    merge.add_argument("--force", action="store_true", help="merge even onto another base (skip the base check)")
    merge.set_defaults(handler=run_merge)


def _weights(text: str) -> list[float]:
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"weights must be comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(w) for w in weights):
        raise argparse.ArgumentTypeError(f"weights must be finite numbers, got {text!r}")
    return weights


def run_inspect(args: argparse.Namespace) -> int:
    """Print what the delta holds; reads only its config."""
    config = read_delta_config(args.delta)
    for line in describe(config):
        print(line)
    return 0


def describe(config: dict[str, Any]) -> list[str]:
    """Human lines for a delta config: base, recipe, fingerprint, totals, then one row per tensor."""
    base, recipe, fp = config["base"], config["recipe"] or {}, config["fingerprint"]
    rows = [(name, spec["dtype"], spec["shape"], _nbytes(spec)) for name, spec in config["tensors"].items()]
    file_bytes = sum(record["size"] for record in config["files"].values())
    width = max(len(name) for name, *_ in rows)
    lines = [
        f"base: {base['name_or_path'] or '(built from a config)'} ({base['model_class']}, "
        f"revision {base['revision']}, config {base['config_hash'][:12]})",
        f"recipe: {recipe.get('name', 'none recorded')}, phase {config['phase']}",
        f"fingerprint: {fp['digest'][:16]} over {fp['tensors']} frozen tensors ({fp['algorithm']})",
        f"tensors: {len(rows)}, {sum(math.prod(shape) for _, _, shape, _ in rows):,} values, "
        f"{_size(sum(size for *_, size in rows))}; files: {len(config['files'])}, {_size(file_bytes)}",
        f"format {config['format_version']}, written by hf_freeze {config['hf_freeze_version']}",
        "",
        f"{'name':<{width}}  {'dtype':<9} {'shape':<16} bytes",
    ]
    lines += [f"{name:<{width}}  {dtype:<9} {shape!s:<16} {size}" for name, dtype, shape, size in rows]
    lines += [f"{alias} is tied to {name}" for alias, name in config["aliases"].items()]
    return lines


def _nbytes(spec: dict[str, Any]) -> int:
    return math.prod(spec["shape"]) * torch.empty((), dtype=getattr(torch, spec["dtype"])).element_size()


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def run_verify(args: argparse.Namespace) -> int:
    """Check every part of the delta against the base at ``--base``; print OK or raise the DeltaError."""
    model = build_base(read_delta_config(args.delta), args.base)
    delta = read_delta(model, args.delta)
    fp = delta.config["fingerprint"]
    print(
        f"OK {args.delta} fits {args.base}: {len(delta.tensors)} tensors checked, base fingerprint matches "
        f"over {fp['tensors']} frozen tensors."
    )
    return 0


def run_merge(args: argparse.Namespace) -> int:
    """Merge the deltas into the base at ``--base`` and write ``--out`` as a save_pretrained folder."""
    model = build_base(read_delta_config(args.delta[0]), args.base)
    merge_deltas(model, args.delta, args.weights, force=args.force)
    save_merged(model, args.out)
    print(f"Merged {len(args.delta)} delta(s) into {args.base}; wrote {args.out}.")
    return 0
