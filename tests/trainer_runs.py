"""Training runs of ``tests/workers/ddp_train.py`` that several test modules judge; each runs once a session.

- :func:`one_process_run`: ``FreezeTrainer`` in this process, per-device batch ``2 * BATCH``.
- :func:`two_process_run`: the same under ``accelerate launch`` with two ranks, per-device batch ``BATCH``:
  the same batches, split across ranks.

Both train ``MAX_STEPS`` steps, snapshot every parameter after step ``SWITCH_STEP`` (when the top block is
unfrozen) and checkpoint every ``SAVE_STEPS`` steps, so ``checkpoint-{SAVE_STEPS}`` lies inside phase 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from launch import WORKERS, launch_two_processes, rank_outputs
from workers import ddp_train
from workers.common import RESULT

BATCH = 4
MAX_STEPS = 7
SAVE_STEPS = 5
SWITCH_STEP = ddp_train.SWITCH_STEP
DDP_TRAIN = WORKERS / "ddp_train.py"

_done: dict[str, Path] = {}


def once(name: str, factory: pytest.TempPathFactory, run: Callable[[Path], None]) -> Path:
    """The output folder of the run ``name``, made by ``run(folder)`` the first time it is asked for."""
    if name not in _done:
        folder = factory.mktemp(name)
        run(folder)
        _done[name] = folder
    return _done[name]


def launch_ddp_train(out: Path, *args: str) -> None:
    """``ddp_train.py --out OUT args`` as two ranks; raises with the output unless both ranks finished."""
    result = launch_two_processes(DDP_TRAIN, "--out", str(out), "--batch-size", str(BATCH), *args)
    rank_outputs(result, out, RESULT)


def one_process_run(factory: pytest.TempPathFactory) -> Path:
    """The one-process run on the combined batches (``2 * BATCH`` per step)."""

    def run(out: Path) -> None:
        ddp_train.train(out, batch_size=2 * BATCH, max_steps=MAX_STEPS, save_steps=SAVE_STEPS, snapshot_at=SWITCH_STEP)

    return once("one_process", factory, run)


def two_process_run(factory: pytest.TempPathFactory) -> Path:
    """The two-rank run (``BATCH`` per rank and step)."""

    def run(out: Path) -> None:
        launch_ddp_train(
            out, "--max-steps", str(MAX_STEPS), "--save-steps", str(SAVE_STEPS), "--snapshot-at", str(SWITCH_STEP)
        )

    return once("two_process", factory, run)
