"""Which path FreezeTrainer and FreezeController take under DeepSpeed, decided on CPU (issue 6).

The Trainer's and Accelerate's DeepSpeed plugins need a GPU (DESIGN section 7): the whole path runs in
``benchmarks/gpu_check.sh``. Here, in one process, the decisions those paths rest on: the optimizer groups
built when the Trainer (``is_deepspeed_enabled``, which it sets from the accelerator's DeepSpeed plugin) or the
accelerator (``distributed_type``) says DeepSpeed, starting at a later phase (the fix a refused phase change
names), and that the phase check does nothing off DeepSpeed. The refusal itself, on a real engine, is in
``tests/test_deepspeed.py`` (``advance_phase`` goes through the same ``check_next_phase``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from accelerate import Accelerator
from accelerate.utils import DistributedType
from workers import deepspeed_train
from workers.ddp_train import tiny_bert

from hf_freeze import FreezeTrainer, Recipe
from hf_freeze.accelerate import FreezeController
from hf_freeze.deepspeed import check_next_phase
from hf_freeze.phases import phase_plans

RECIPE = deepspeed_train.RECIPE  # phase 0: head and first-block kernels; phase 1 adds the top block


def plans() -> list:
    return phase_plans(tiny_bert(), Recipe.from_dict(RECIPE))


def optimized(optimizer) -> tuple[set[int], int]:
    """The phases of the optimizer's groups and how many tensors it holds."""
    groups = optimizer.param_groups
    return {group["hf_freeze_phase"] for group in groups}, sum(len(group["params"]) for group in groups)


def trainer(tmp_path: Path, deepspeed: bool, phase: int = 0) -> FreezeTrainer:
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    built = FreezeTrainer(tiny_bert(), args=args, recipe=RECIPE, phase=phase)
    built.is_deepspeed_enabled = deepspeed  # what Trainer.__init__ sets from a DeepSpeed plugin (GPU only)
    return built


@pytest.mark.parametrize("deepspeed", [False, True], ids=["plain", "deepspeed"])
def test_trainer_optimizer_holds_every_phase_or_under_deepspeed_the_current_one(tmp_path: Path, deepspeed) -> None:
    phases, count = optimized(trainer(tmp_path, deepspeed).create_optimizer())
    planned = plans()
    assert phases == ({0} if deepspeed else {0, 1})
    assert count == len(planned[0 if deepspeed else 1].trainable)


def test_trainer_started_at_a_later_phase_trains_it_and_builds_its_groups(tmp_path: Path) -> None:
    built = trainer(tmp_path, deepspeed=True, phase=1)
    trainable = {name for name, param in built.model.named_parameters() if param.requires_grad}
    assert built.phases.phase == 1 and trainable == set(plans()[1].trainable)
    assert optimized(built.create_optimizer()) == ({0, 1}, len(plans()[1].trainable))


@pytest.mark.parametrize("distributed_type", [DistributedType.NO, DistributedType.DEEPSPEED], ids=str)
def test_controller_optimizer_under_deepspeed_holds_the_current_phase(monkeypatch, distributed_type) -> None:
    accelerator = Accelerator(cpu=True)
    monkeypatch.setattr(accelerator.state, "distributed_type", distributed_type)  # DeepSpeed's plugin needs a GPU
    controller = FreezeController(accelerator, tiny_bert(), RECIPE, lr=1e-3)
    deepspeed = distributed_type == DistributedType.DEEPSPEED
    assert optimized(controller.optimizer) == (
        ({0}, len(plans()[0].trainable)) if deepspeed else ({0, 1}, len(plans()[1].trainable))
    )
    later = FreezeController(accelerator, tiny_bert(), RECIPE, lr=1e-3, phase=1)
    assert later.phase == 1 and optimized(later.optimizer)[0] == {0, 1}


def test_the_phase_check_does_nothing_off_deepspeed(tmp_path: Path) -> None:
    built = trainer(tmp_path, deepspeed=False)
    check_next_phase(built.model, built.phases)  # a plain model: no engine to refuse the next phase
    assert built.phases.phase == 0
