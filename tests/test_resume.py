"""Resume inside phase 2 (issue 4, "Done when" 4): bitwise equal to an uninterrupted run, in one process and in
two; checkpoints are deltas, not models; a checkpoint of another recipe is refused.

The interrupted runs keep the full run's ``max_steps`` (so the LR schedule is the same) and stop right after
the checkpoint at step ``SAVE_STEPS``, two steps after the top block was unfrozen at ``SWITCH_STEP``. A fresh
model and ``FreezeTrainer`` (a fresh process, for two ranks) then resume from that checkpoint to the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainer_runs import (
    BATCH,
    MAX_STEPS,
    SAVE_STEPS,
    SWITCH_STEP,
    launch_ddp_train,
    once,
    one_process_run,
    two_process_run,
)
from workers import ddp_train
from workers.common import parameters, read_parameters, read_result

from hf_freeze import RecipeError
from hf_freeze.delta import CONFIG_NAME

CHECKPOINT = f"checkpoint-{SAVE_STEPS}"
STOP = ("--max-steps", str(MAX_STEPS), "--save-steps", str(SAVE_STEPS))


def checkpoint(out: Path) -> Path:
    """The mid-phase-2 checkpoint of the run in ``out``."""
    return out / "run" / CHECKPOINT


@pytest.fixture(scope="module")
def interrupted_one(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def run(out: Path) -> None:
        ddp_train.train(out, batch_size=2 * BATCH, max_steps=MAX_STEPS, save_steps=SAVE_STEPS, stop_at=SAVE_STEPS)

    return once("interrupted_one", tmp_path_factory, run)


@pytest.fixture(scope="module")
def resumed_one(tmp_path_factory: pytest.TempPathFactory, interrupted_one: Path) -> Path:
    def run(out: Path) -> None:
        resume = str(checkpoint(interrupted_one))
        ddp_train.train(out, batch_size=2 * BATCH, max_steps=MAX_STEPS, save_steps=SAVE_STEPS, resume=resume)

    return once("resumed_one", tmp_path_factory, run)


@pytest.fixture(scope="module")
def interrupted_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def run(out: Path) -> None:
        launch_ddp_train(out, *STOP, "--stop-at", str(SAVE_STEPS))

    return once("interrupted_two", tmp_path_factory, run)


@pytest.fixture(scope="module")
def resumed_two(tmp_path_factory: pytest.TempPathFactory, interrupted_two: Path) -> Path:
    def run(out: Path) -> None:
        launch_ddp_train(out, *STOP, "--resume", str(checkpoint(interrupted_two)))

    return once("resumed_two", tmp_path_factory, run)


def assert_bitwise_equal(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    different = [name for name in left if not torch.equal(left[name], right[name])]
    assert not different, f"differ: {different}"


TWO_RANKS = pytest.param("interrupted_two", 2, marks=pytest.mark.slow, id="two_processes")
INTERRUPTED = [pytest.param("interrupted_one", 1, id="one_process"), TWO_RANKS]


@pytest.mark.parametrize(("run", "ranks"), INTERRUPTED)
def test_interrupted_run_stops_inside_phase_two(request: pytest.FixtureRequest, run: str, ranks: int) -> None:
    out = request.getfixturevalue(run)
    assert SWITCH_STEP < SAVE_STEPS < MAX_STEPS
    for rank in range(ranks):
        result = read_result(out, rank)
        assert (result["world_size"], result["global_step"], result["phase"]) == (ranks, SAVE_STEPS, 1)
    assert sorted(path.name for path in (out / "run").iterdir()) == [CHECKPOINT]


@pytest.mark.parametrize(("run", "ranks"), INTERRUPTED)
def test_checkpoint_holds_a_delta_not_the_model(request: pytest.FixtureRequest, run: str, ranks: int) -> None:
    folder = checkpoint(request.getfixturevalue(run))
    files = {path.name for path in folder.iterdir()}
    assert {"delta.safetensors", CONFIG_NAME, "hf_freeze_state.json", "optimizer.pt", "scheduler.pt"} <= files
    assert not files & {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"}
    assert ({"rng_state.pth"} if ranks == 1 else {f"rng_state_{rank}.pth" for rank in range(ranks)}) <= files
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert (set(config["tensors"]), config["phase"]) == (ddp_train.trainable_names(1), 1)
    assert json.loads((folder / "hf_freeze_state.json").read_text())["phase"]["phase"] == 1


def test_resume_in_one_process_is_bitwise_equal(tmp_path_factory: pytest.TempPathFactory, resumed_one: Path) -> None:
    full = one_process_run(tmp_path_factory)
    result = read_result(resumed_one)
    assert (result["world_size"], result["global_step"], result["phase"]) == (1, MAX_STEPS, 1)
    assert_bitwise_equal(read_parameters(resumed_one), read_parameters(full))


@pytest.mark.slow
def test_resume_in_two_processes_is_bitwise_equal(tmp_path_factory: pytest.TempPathFactory, resumed_two: Path) -> None:
    full = two_process_run(tmp_path_factory)
    for rank in (0, 1):
        result = read_result(resumed_two, rank)
        assert (result["world_size"], result["rank"], result["global_step"], result["phase"]) == (2, rank, MAX_STEPS, 1)
        assert_bitwise_equal(read_parameters(resumed_two, rank), read_parameters(full, rank))


def test_resume_with_another_recipe_is_refused(tmp_path: Path, interrupted_one: Path) -> None:
    other = {**ddp_train.RECIPE, "name": "head_then_top_block_sooner"}
    other["phases"] = [{**other["phases"][0], "until": {"step": 2}}, other["phases"][1]]
    trainer = ddp_train.build(tmp_path, batch_size=2 * BATCH, max_steps=MAX_STEPS, recipe=other)
    before = parameters(trainer.model)
    flags = {name: param.requires_grad for name, param in trainer.model.named_parameters()}
    with pytest.raises(RecipeError, match=r"made with recipe 'head_then_top_block', which differs from .*same recipe"):
        trainer.train(resume_from_checkpoint=str(checkpoint(interrupted_one)))
    assert_bitwise_equal(parameters(trainer.model), before)
    assert {name: param.requires_grad for name, param in trainer.model.named_parameters()} == flags
    assert trainer.phases.phase == 0
