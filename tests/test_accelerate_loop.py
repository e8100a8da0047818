"""The README's custom Accelerate loop (``FreezeController``) runs, in one process and in two (issue 4, "Done
when" 6): it trains the head, unfreezes the top block at the step trigger, leaves frozen tensors bitwise
unchanged, and keeps the two ranks bitwise identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from launch import WORKERS, launch_two_processes, rank_outputs, run_one_process
from trainer_runs import SWITCH_STEP, once
from workers.accelerate_loop import BATCH_SIZE, ROWS
from workers.common import RESULT, parameters, read_parameters, read_result
from workers.ddp_train import tiny_bert, trainable_names

LOOP = WORKERS / "accelerate_loop.py"
SNAPSHOT = f"step-{SWITCH_STEP}.safetensors"
RUNS = [pytest.param(1, id="one_process"), pytest.param(2, marks=pytest.mark.slow, id="two_processes")]


@pytest.fixture(scope="module")
def loop_runs(tmp_path_factory: pytest.TempPathFactory):
    """``loop_runs(ranks)``: the output folder of the loop run with that many processes (run on first use)."""

    def get(ranks: int) -> Path:
        def run(out: Path) -> None:
            start = run_one_process if ranks == 1 else launch_two_processes
            rank_outputs(start(LOOP, "--out", str(out)), out, RESULT, ranks)

        return once(f"accelerate_loop_{ranks}", tmp_path_factory, run)

    return get


@pytest.mark.parametrize("ranks", RUNS)
def test_loop_unfreezes_at_the_step_trigger(loop_runs, ranks: int) -> None:
    out = loop_runs(ranks)
    for rank in range(ranks):
        result = read_result(out, rank)
        assert (result["world_size"], result["rank"]) == (ranks, rank)
        assert (result["phase"], result["phase_steps"]) == (1, [SWITCH_STEP])
        assert result["global_step"] == ROWS // (BATCH_SIZE * ranks)


@pytest.mark.parametrize("ranks", RUNS)
def test_loop_moves_what_trains_and_nothing_else(loop_runs, ranks: int) -> None:
    out = loop_runs(ranks)
    initial = parameters(tiny_bert())
    head, trained = trainable_names(0), trainable_names(1)
    for rank in range(ranks):
        at_switch, final = read_parameters(out, rank, SNAPSHOT), read_parameters(out, rank)
        assert [name for name in initial.keys() - trained if not torch.equal(final[name], initial[name])] == []
        assert [name for name in trained - head if not torch.equal(at_switch[name], initial[name])] == []
        assert [name for name in head if torch.equal(at_switch[name], initial[name])] == []
        assert [name for name in trained if torch.equal(final[name], at_switch[name])] == []


@pytest.mark.slow
def test_loop_ranks_are_bitwise_identical(loop_runs) -> None:
    out = loop_runs(2)
    for name in ("params.safetensors", SNAPSHOT):
        rank0, rank1 = read_parameters(out, 0, name), read_parameters(out, 1, name)
        assert [key for key in rank0 if not torch.equal(rank0[key], rank1[key])] == []


def test_the_worker_runs_the_readme_loop_line_for_line() -> None:
    """The README's loop body (comments aside) is what the worker above runs, so the tests run the README."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("### A custom Accelerate loop", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    loop = block[block.index("model, optimizer, train_dl = freeze.prepare") :]
    worker = LOOP.read_text(encoding="utf-8")
    for line in loop.splitlines():
        code = line.split("#", 1)[0].rstrip()
        if code and not code.strip().startswith("freeze.step()"):  # the worker tests freeze.step()'s result
            assert code in worker, code
