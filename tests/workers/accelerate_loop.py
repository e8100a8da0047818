"""The README's custom Accelerate loop (``hf_freeze.accelerate`` module docstring), as a runnable worker.

The loop is the README's, line for line; only the setup around it is the test's: the tiny BERT and recipe
of ``workers.ddp_train`` (head first, top block unfrozen after step ``SWITCH_STEP``), a sequential
``DataLoader`` that ``prepare`` shards across ranks, and the outputs of ``workers.common``, plus
``step-N.safetensors`` right after the phase changes at step ``N`` and, in ``result.json``, ``phase``,
``global_step`` and ``phase_steps`` (the steps at which ``freeze.step()`` reported a change). Run it as plain
Python (one process) or under ``accelerate launch`` (``tests/launch.py``, which also sets
``ACCELERATE_USE_CPU=1``).
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator
from tiny import random_text_dataset

from hf_freeze.accelerate import FreezeController
from hf_freeze.grad_sync import world_size
from workers.common import rank_dir, save_parameters, write_result
from workers.ddp_train import RECIPE, tiny_bert

BATCH_SIZE = 4
ROWS = 48


def main(argv: list[str] | None = None) -> None:
    """Train one epoch with the README loop; write this rank's results into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    options = parser.parse_args(argv)

    model = tiny_bert().train()
    dataset = random_text_dataset(ROWS).with_format("torch")
    train_dl = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=False)
    phase_steps = []

    # ---- the README example ----
    accelerator = Accelerator(cpu=True)
    freeze = FreezeController(accelerator, model, RECIPE, lr=1e-3)
    model, optimizer, train_dl = freeze.prepare(train_dl)
    for batch in train_dl:
        accelerator.backward(model(**batch).loss)
        freeze.sync_gradients()
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if freeze.step():
            phase_steps.append(freeze.global_step)
            snapshot = rank_dir(options.out, accelerator.process_index) / f"step-{freeze.global_step}.safetensors"
            save_parameters(accelerator.unwrap_model(model), snapshot)
    # ---- end of the example ----

    write_result(
        options.out,
        accelerator.process_index,
        world_size(),
        accelerator.unwrap_model(model),
        phase=freeze.phase,
        global_step=freeze.global_step,
        phase_steps=phase_steps,
    )


if __name__ == "__main__":
    main()
