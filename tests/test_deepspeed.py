"""DeepSpeed ZeRO-2 and ZeRO-3 with a recipe, two ranks on CPU (issue 6, "Done when" 3).

Each stage runs ``tests/workers/deepspeed_train.py`` once under ``torchrun`` (raw engine, gloo; the Trainer and
Accelerate DeepSpeed paths need a GPU) and the tests judge what the ranks wrote: training equal to one plain
torch process on the same data, frozen tensors bitwise unchanged, ranks bitwise identical, optimizer state and
gradients only for what trains, ZeRO-3 partitioning of frozen parameters, a checkpoint without frozen tensors,
a delta equal to the one-process delta that loads into a fresh base, the refusal of a late unfreeze, and what
happens without that refusal (the unfrozen tensors never move, and nothing says so).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from launch import WORKERS, launch_torchrun, rank_outputs
from trainer_runs import once
from workers import deepspeed_train
from workers.common import RESULT, parameters, read_parameters, read_result
from workers.ddp_train import tiny_bert

from hf_freeze import Recipe
from hf_freeze.deepspeed import engine_param_groups, is_deepspeed_engine, late_unfreeze_messages
from hf_freeze.delta import load_delta, read_delta, save_delta
from hf_freeze.phases import phase_plans

INSTALL = 'DS_BUILD_OPS=0 pip install --no-build-isolation "deepspeed==0.19.8"'
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason=f"DeepSpeed is not installed; install it with {INSTALL}"
)
STAGES = (2, 3)
RANKS = (0, 1)
TOLERANCE = 1e-6  # measured: at most 3e-8 between two ranks and one process


@functools.cache
def plans() -> list:
    """The worker recipe's plan per phase (0: head and first-block kernels; 1: the top block too)."""
    return phase_plans(tiny_bert(), Recipe.from_dict(deepspeed_train.RECIPE))


def late() -> list[str]:
    """What phase 1 unfreezes, in plan order."""
    return [name for name in plans()[1].trainable if name not in plans()[0].trainable]


@pytest.fixture(scope="module", params=STAGES, ids=lambda stage: f"zero{stage}")
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    stage = request.param

    def launch(out: Path) -> None:
        result = launch_torchrun(WORKERS / "deepspeed_train.py", "--out", str(out), "--stage", str(stage))
        rank_outputs(result, out, RESULT)

    return once(f"deepspeed_zero{stage}", tmp_path_factory, launch)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """One plain torch process on the combined batches, and its delta."""
    model = deepspeed_train.reference_run()
    return model, save_delta(model, tmp_path_factory.mktemp("reference") / "delta")


def stage_of(run: Path) -> int:
    return read_result(run)["stage"]


@pytest.mark.slow
@needs_deepspeed
def test_two_ranks_whose_optimizer_holds_exactly_what_trains(run: Path) -> None:
    trainable = plans()[0].trainable
    for rank in RANKS:
        result = read_result(run, rank)
        assert result["world_size"] == 2
        assert result["optimized"] == sorted(trainable)


@pytest.mark.slow
@needs_deepspeed
def test_training_equals_one_process_frozen_bitwise_unchanged(run: Path, reference) -> None:
    snapshot = deepspeed_train.SNAPSHOT
    ranks = [read_parameters(run, rank, snapshot) for rank in RANKS]
    initial, expected = parameters(tiny_bert()), parameters(reference[0])
    planned = plans()[0]
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), f"ranks differ on {name}"
        if name in planned.frozen:
            assert torch.equal(value, initial[name]), f"frozen {name} changed"
        else:
            assert not torch.equal(value, initial[name]), f"trainable {name} did not move"
        assert torch.allclose(value, expected[name], rtol=0, atol=TOLERANCE), name


@pytest.mark.slow
@needs_deepspeed
def test_frozen_parameters_get_no_gradient_or_optimizer_state(run: Path) -> None:
    trainable = sum(tiny_bert().get_parameter(name).numel() for name in plans()[0].trainable)
    for rank in RANKS:
        result = read_result(run, rank)
        share = math.ceil(trainable / 2)
        # AdamW: exp_avg and exp_avg_sq over this rank's share of what trains (ZeRO pads each share a little).
        assert 2 * share <= result["optimizer_state_elements"] <= 2 * share + 16
        for when in ("after_backward", "after_step"):
            stats = result["memory"][when]
            assert stats["trainable_bytes"] == 4 * trainable
            assert stats["optimizer_state_bytes"] <= stats["optimizer_state_limit_bytes"] + 64
            assert stats["master_weight_bytes"] <= stats["master_weight_limit_bytes"] + 64
        grads = result["memory"]["after_backward"]
        # ZeRO-2 keeps whole gradients of the parameters that straddle a partition boundary (measured <= 1.1x).
        assert 0 < grads["gradient_bytes"] <= 1.3 * grads["gradient_limit_bytes"]
        assert result["memory"]["line"].startswith(f"memory on rank {rank} of 2 (deepspeed): parameters ")


@pytest.mark.slow
@needs_deepspeed
def test_zero3_partitions_every_parameter_frozen_ones_included(run: Path) -> None:
    whole = parameters(tiny_bert())
    result = read_result(run)
    partitions, stats = result["zero3_partitions"], result["memory"]["after_step"]
    model_bytes = 4 * sum(value.numel() for value in whole.values())
    if stage_of(run) == 2:
        assert partitions == {} and stats["parameter_bytes"] <= model_bytes + 64
        return
    assert set(partitions) == set(whole)
    for name, (local, placeholder, full) in partitions.items():
        assert (local, placeholder, full) == (math.ceil(full / 2), 0, whole[name].numel()), name
    assert stats["parameter_bytes"] <= model_bytes / 2 + 64


def checkpoint_tensors(folder: Path) -> dict[str, Any]:
    """Every tensor in a DeepSpeed checkpoint's files, by file and key path (our own files: pickle is fine)."""
    found: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, torch.Tensor):
            found[path] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}/{key}")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")

    for file in sorted(folder.glob("*.pt")):
        walk(torch.load(file, map_location="cpu", weights_only=False), file.name)
    return found


@pytest.mark.slow
@needs_deepspeed
def test_trainable_only_checkpoint_holds_no_frozen_tensor(run: Path) -> None:
    planned = plans()[0]
    trainable = sum(tiny_bert().get_parameter(name).numel() for name in planned.trainable)
    frozen = sum(tiny_bert().get_parameter(name).numel() for name in planned.frozen)
    only = checkpoint_tensors(run / "ckpt-trainable" / deepspeed_train.TAG)
    full = checkpoint_tensors(run / "ckpt-full" / deepspeed_train.TAG)
    assert not [path for path in only if any(name in path for name in planned.frozen)]
    assert [path for path in full if any(name in path for name in planned.frozen)]
    for file in (run / "ckpt-trainable" / deepspeed_train.TAG).glob("*model_states.pt"):
        state = torch.load(file, map_location="cpu", weights_only=False)
        assert set(state["module"]) == set(planned.trainable)
        assert state["frozen_param_fragments"] is None
    # ZeRO-2: whole trainable module tensors (T) + fp32 master, exp_avg, exp_avg_sq shares (3 T); ZeRO-3: 3 T.
    elements = sum(tensor.numel() for tensor in only.values())
    assert elements <= 4 * trainable + 64 < frozen
    assert read_result(run)["reload_equal"]


@pytest.mark.slow
@needs_deepspeed
def test_delta_equals_the_one_process_delta_and_loads_into_a_fresh_base(run: Path, reference) -> None:
    model, reference_delta = reference
    exported = read_delta(tiny_bert(), run / "delta")  # also verifies the base fingerprint
    expected = read_delta(tiny_bert(), reference_delta)
    assert exported.config["fingerprint"] == expected.config["fingerprint"]
    assert set(exported.tensors) == set(expected.tensors) == set(plans()[0].trainable)
    for name, value in exported.tensors.items():
        assert torch.allclose(value, expected.tensors[name], rtol=0, atol=TOLERANCE), name
    loaded = load_delta(tiny_bert(), run / "delta")
    batch = deepspeed_train.batch(0, 0, 1, rows=16)
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)


@pytest.mark.slow
@needs_deepspeed
def test_a_late_unfreeze_is_refused_with_one_sentence(run: Path) -> None:
    (linted,) = late_unfreeze_messages(plans())
    expected = linted.replace("the DeepSpeed engine is built", f"the DeepSpeed ZeRO-{stage_of(run)} engine was built")
    for rank in RANKS:
        result = read_result(run, rank)
        assert result["refusal"] == expected
        assert f"phase 1 (top): unfreezes {late()[0]} and {len(late()) - 1} more tensors after" in expected
        assert "initialize(..., phase=1)" in expected and "\n" not in expected
        assert result["flags_kept"]


@pytest.mark.slow
@needs_deepspeed
def test_without_the_refusal_the_unfrozen_tensors_silently_never_update(run: Path) -> None:
    for rank in RANKS:
        unguarded = read_result(run, rank)["late_unfreeze"]
        assert unguarded["tensors"] == sorted(late()) and unguarded["late_requires_grad"]
        assert unguarded["error"] is None
        assert unguarded["late_moved"] == []
        assert unguarded["head_moved"] == sorted(plans()[0].trainable)


@pytest.mark.slow
@needs_deepspeed
def test_the_fix_the_refusal_names_trains_the_unfrozen_tensors(run: Path) -> None:
    for rank in RANKS:
        rebuilt = read_result(run, rank)["rebuilt"]
        assert rebuilt["phase"] == 1
        assert rebuilt["optimized"] == rebuilt["moved"] == sorted(plans()[1].trainable)


def test_engine_groups_hold_the_phases_reached_only() -> None:
    recipe = Recipe.from_dict(deepspeed_train.RECIPE)
    planned = plans()
    for phase, planned_phase in enumerate(planned):
        groups = engine_param_groups(planned, recipe, 1e-3, 0.01, None, phase)
        assert {group["hf_freeze_phase"] for group in groups} == set(range(phase + 1))
        assert sum(len(group["params"]) for group in groups) == len(planned_phase.trainable)
    assert not is_deepspeed_engine(tiny_bert())


def test_lint_names_each_phase_an_engine_built_at_phase_0_would_refuse() -> None:
    assert late_unfreeze_messages(plans()) == [
        f"<dict>, phase 1 (top): unfreezes {late()[0]} and {len(late()) - 1} more tensors after the DeepSpeed "
        "engine is built, and DeepSpeed would silently never update them (its optimizer holds only what required "
        "grad at deepspeed.initialize); export the delta (hf_freeze.deepspeed.export_delta) and build a new engine "
        "with hf_freeze.deepspeed.initialize(..., phase=1) on the model with that delta loaded, or unfreeze them "
        "in the first phase."
    ]
    no_phases = {"name": "head", "default": "frozen", "rules": [{"select": "@head", "trainable": True}]}
    assert late_unfreeze_messages(phase_plans(tiny_bert(), Recipe.from_dict(no_phases))) == []
