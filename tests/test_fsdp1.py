"""FSDP1 on CPU with two ranks (issue 6, "Done when" 2): the linter's mixed unit, the trainable wrap policy with
flat parameters through a phase change, gradient bytes against a mixed unit, and the delta of flat parameters.

One ``accelerate launch`` of ``tests/workers/fsdp1_train.py``; the one-process reference is the FSDP2 test's
loop (``workers.fsdp2_train.train(sharded=False)``), the same model, recipe, batches and optimizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_ddp import NOISE_ONLY
from workers.common import rank_dir
from workers.ddp_train import RECIPE, SWITCH_STEP, tiny_bert, trainable_names
from workers.fsdp2_train import train
from workers.fsdp_common import launch_worker, read_results

from hf_freeze.delta import load_delta
from hf_freeze.fsdp1 import planned_units, trainable_units, trainable_wrap_policy
from hf_freeze.lint import lint

pytestmark = pytest.mark.slow

RANKS = (0, 1)
LAYER_TENSORS = 16  # per BERT layer: 6 dense (weight, bias) + 2 LayerNorms (weight, bias)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return launch_worker("fsdp1_train.py", tmp_path_factory.mktemp("fsdp1"))


@pytest.fixture(scope="module")
def results(run: Path) -> list[dict[str, Any]]:
    return read_results(run)


@pytest.fixture(scope="module")
def single() -> dict[str, torch.Tensor]:
    model, _, _ = train(sharded=False)
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def test_the_linter_names_the_mixed_unit_fsdp1_refuses(results: list[dict[str, Any]]) -> None:
    """FSDP1 refuses the one mixed unit without naming it; the linter, run before wrapping, names it and the fix."""
    for result in results:
        assert "uniform `requires_grad` when `use_orig_params=False`" in result["refused"]
    findings = lint(tiny_bert(), RECIPE, "fsdp1")
    assert [finding.level for finding in findings] == ["error"]
    assert "root unit" in findings[0].message and "trainable_wrap_policy" in findings[0].message


def test_the_policy_makes_uniform_units_and_fsdp1_builds_exactly_them(results: list[dict[str, Any]]) -> None:
    model = tiny_bert()
    assert trainable_units(model, RECIPE) == [f"bert.encoder.layer.{i}" for i in range(3)] + ["classifier"]
    assert lint(model, RECIPE, "fsdp1", auto_wrap_policy=trainable_wrap_policy(model, RECIPE)) == []
    predicted = [list(unit.params) for unit in planned_units(model, trainable_wrap_policy(model, RECIPE))]
    for result in results:
        assert result["policy"]["units"] == predicted
        assert [len(unit) for unit in result["policy"]["units"]] == [7, *[LAYER_TENSORS] * 3, 2]
        assert result["orig"]["units"] == [[name for name, _ in model.named_parameters()]]


@pytest.mark.parametrize("run_name", ["policy", "orig"])
def test_training_equals_one_process(run: Path, results: list, single: dict[str, torch.Tensor], run_name: str) -> None:
    """Flat parameters with the policy, and the mixed unit with use_orig_params=True: both train correctly."""
    assert all(result[run_name]["switched"] == [SWITCH_STEP] for result in results)
    trained = load_file(rank_dir(run, 0) / f"{run_name}.safetensors")
    base = {name: param.detach() for name, param in tiny_bert().named_parameters()}
    assert set(trained) == set(single)
    for name, value in single.items():
        if name not in NOISE_ONLY:
            torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-6, msg=name)
        if name not in trainable_names(1):
            assert torch.equal(trained[name], base[name]), f"frozen {name} changed"


def test_gradient_bytes_per_rank_policy_against_mixed_unit(results: list[dict[str, Any]]) -> None:
    """With the policy each rank holds gradients for its share of the trainable tensors only; the mixed unit
    with use_orig_params=True holds a gradient for its whole local shard, frozen elements included."""
    for result in results:
        policy, orig = result["policy"]["memory"], result["orig"]["memory"]
        assert 0 < policy["gradient_bytes"] <= policy["gradient_limit_bytes"] + 64  # flat-parameter padding
        assert orig["gradient_bytes"] == orig["parameter_bytes"]  # the whole local flat gradient
        assert orig["gradient_bytes"] > 5 * policy["gradient_bytes"]


def test_delta_of_flat_parameters_loads_sharded_and_unsharded(run: Path) -> None:
    trained = load_file(rank_dir(run, 0) / "policy.safetensors")
    loaded = load_file(rank_dir(run, 0) / "loaded.safetensors")
    assert all(torch.equal(loaded[name], trained[name]) for name in trained)
    model = tiny_bert()
    load_delta(model, run / "delta")
    assert all(torch.equal(param.detach(), trained[name]) for name, param in model.named_parameters())
