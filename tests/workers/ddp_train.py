"""Train a tiny BERT that unfreezes its top block at step ``SWITCH_STEP``; write each rank's parameters.

``--trainer freeze`` runs ``FreezeTrainer`` with :data:`RECIPE`. ``--trainer plain`` is what users do with a
plain ``transformers.Trainer``: freeze by hand, pass ``AdamW(model.parameters())``, and unfreeze the top
block from a callback at ``SWITCH_STEP`` (under DDP its gradients are never averaged).

Run it under ``accelerate launch`` (two ranks; ``tests/launch.py``, which puts ``tests/`` on
``PYTHONPATH``) or call :func:`train` in-process (one rank). Dropout is off and sampling is sequential, so
two ranks with per-device batch ``B`` see exactly the batches of one process with batch ``2 B``. Outputs:
see ``workers.common``; ``result.json`` also holds ``global_step``, ``phase`` and the Trainer's
``log_history``. ``--snapshot-at N`` also writes ``step-N.safetensors`` after optimizer step ``N``;
``--stop-at K`` ends the run after step ``K`` (and its checkpoint) while keeping ``max_steps`` (and so the
LR schedule) of the full run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import transformers
from tiny import random_text_dataset, tiny_model
from transformers import TrainerCallback, TrainingArguments

from hf_freeze import FreezeTrainer, Recipe, plan
from hf_freeze.grad_sync import world_size
from workers.common import rank_dir, save_parameters, write_result

SWITCH_STEP = 3
LEARNING_RATE = 1e-3
ROWS = 64
RECIPE: dict[str, Any] = {
    "name": "head_then_top_block",
    "default": "frozen",
    "rules": [{"select": "@head", "trainable": True}],
    "phases": [
        {"name": "head", "until": {"step": SWITCH_STEP}},
        {"name": "top", "rules": [{"select": "@blocks[-1:]", "trainable": True}]},
    ],
}


def tiny_bert() -> transformers.PreTrainedModel:
    """The seeded tiny BERT classifier, dropout off (so ranks and batch splits are comparable).

    ``initializer_range=0.2`` gives gradient norms of about 0.5-2.5, so ``max_grad_norm=1.0`` really clips
    (with the default 0.02 it never does, and clipping of unsynchronised gradients would go untested).
    """
    return tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)


def trainable_names(phase: int) -> set[str]:
    """Names of the tensors that train in ``phase`` of :data:`RECIPE` (0: the head; 1: head and top block)."""
    return set(plan(tiny_bert(), Recipe.from_dict(RECIPE), phase=phase).trainable)


def training_args(output_dir: str | Path, batch_size: int, max_steps: int, save_steps: int | None) -> TrainingArguments:
    """Deterministic CPU arguments shared by every run (AdamW, ``max_grad_norm=1.0``, sequential batches)."""
    return TrainingArguments(
        output_dir=str(output_dir),
        use_cpu=True,
        per_device_train_batch_size=batch_size,
        max_steps=max_steps,
        learning_rate=LEARNING_RATE,
        max_grad_norm=1.0,
        train_sampling_strategy="sequential",
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        logging_strategy="steps",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        # average_tokens_across_devices stays at its default (True): under two ranks FreezeTrainer finds that
        # the classification loss ignores num_items_in_batch and does not let Trainer double the gradients.
    )


class SnapshotAt(TrainerCallback):
    """Writes every parameter to ``folder/step-N.safetensors`` after optimizer step ``N``."""

    def __init__(self, step: int, folder: Path):
        self.step = step
        self.folder = folder

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            save_parameters(model, self.folder / f"step-{self.step}.safetensors")


class StopAt(TrainerCallback):
    """Ends training after optimizer step ``step`` (after that step's checkpoint), as an interruption would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


class UnfreezeTopBlock(TrainerCallback):
    """The usual hand-made progressive unfreezing: set ``requires_grad`` on the top block at ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            model.bert.encoder.layer[-1].requires_grad_(True)


def plain_trainer(model: transformers.PreTrainedModel, args: TrainingArguments, **kwargs: Any) -> transformers.Trainer:
    """A plain ``Trainer``: head trainable, optimizer over ``model.parameters()``, top block unfrozen later."""
    model.requires_grad_(False)
    model.classifier.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    kwargs["callbacks"] = [*kwargs.get("callbacks", []), UnfreezeTopBlock(SWITCH_STEP)]
    return transformers.Trainer(model=model, args=args, optimizers=(optimizer, None), **kwargs)


def build(
    out: str | Path,
    *,
    trainer: str = "freeze",
    batch_size: int = 4,
    max_steps: int = 7,
    save_steps: int | None = None,
    stop_at: int | None = None,
    snapshot_at: int | None = None,
    recipe: dict[str, Any] | None = None,
) -> transformers.Trainer:
    """A fresh model and trainer writing into ``out`` (checkpoints in ``out/run``)."""
    out = Path(out)
    model = tiny_bert()
    args = training_args(out / "run", batch_size, max_steps, save_steps)
    callbacks: list[TrainerCallback] = []
    if snapshot_at is not None:
        callbacks.append(SnapshotAt(snapshot_at, rank_dir(out, args.process_index)))
    if stop_at is not None:
        callbacks.append(StopAt(stop_at))
    kwargs: dict[str, Any] = dict(train_dataset=random_text_dataset(ROWS), callbacks=callbacks)
    if trainer == "freeze":
        return FreezeTrainer(model=model, args=args, recipe=recipe or RECIPE, **kwargs)
    return plain_trainer(model, args, **kwargs)


def train(out: str | Path, *, resume: str | None = None, **options: Any) -> transformers.Trainer:
    """:func:`build` with ``options``, train (from checkpoint ``resume`` if given), write this rank's results."""
    result = build(out, **options)
    result.train(resume_from_checkpoint=resume)
    phases = getattr(result, "phases", None)
    write_result(
        out,
        result.args.process_index,
        world_size(),
        result.model,
        global_step=result.state.global_step,
        phase=phases.phase if phases is not None else None,
        log_history=result.state.log_history,
    )
    return result


def main(argv: list[str] | None = None) -> None:
    """Command line: ``ddp_train.py --out DIR [--trainer plain] [--batch-size B] [--max-steps M] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--trainer", choices=("freeze", "plain"), default="freeze")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=7)
    parser.add_argument("--save-steps", type=int)
    parser.add_argument("--stop-at", type=int)
    parser.add_argument("--snapshot-at", type=int)
    parser.add_argument("--resume")
    train(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
