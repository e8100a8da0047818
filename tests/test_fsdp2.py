"""FSDP2 on CPU with two ranks (issue 6, "Done when" 1): phases, delta, load, refusal, memory, mixed precision.

One ``accelerate launch`` of ``tests/workers/fsdp2_train.py`` (two gloo ranks, ``fully_shard`` per block and
root) trains the tiny BERT of ``workers.ddp_train`` through a phase change that unfreezes the top block after
sharding, against the same loop in this process on the combined batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_ddp import NOISE_ONLY
from workers.common import rank_dir
from workers.ddp_train import SWITCH_STEP, tiny_bert, trainable_names
from workers.fsdp2_train import PROBE, train
from workers.fsdp_common import launch_worker, read_results

from hf_freeze.delta import load_delta, read_delta_config

pytestmark = pytest.mark.slow

RANKS = (0, 1)
# Whole-tensor padding of uneven shards: a few elements per tensor over the exact per-rank share.
PADDING_SLACK = 1024


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return launch_worker("fsdp2_train.py", tmp_path_factory.mktemp("fsdp2"))


@pytest.fixture(scope="module")
def results(run: Path) -> list[dict[str, Any]]:
    return read_results(run)


@pytest.fixture(scope="module")
def single() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    model, _, facts = train(sharded=False)
    return {name: param.detach().clone() for name, param in model.named_parameters()}, facts


def test_two_ranks_changed_phase_after_the_switch_step(results: list[dict[str, Any]]) -> None:
    for rank, result in enumerate(results):
        assert (result["world_size"], result["rank"]) == (2, rank)
        assert result["switched"] == [SWITCH_STEP] and result["phase"] == 1


def test_sharded_training_equals_one_process(run: Path, results: list[dict[str, Any]], single: tuple) -> None:
    """Same parameters (float tolerance) and the same per-step loss (the mean of the two halves' means)."""
    expected, facts = single
    trained = load_file(rank_dir(run, 0) / "trained.safetensors")
    assert set(trained) == set(expected)
    for name, value in expected.items():
        if name not in NOISE_ONLY:
            torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-6, msg=name)
    halves = torch.tensor([result["losses"] for result in results]).mean(dim=0)
    torch.testing.assert_close(halves, torch.tensor(facts["losses"]), rtol=0, atol=1e-5)


def test_frozen_tensors_bitwise_unchanged_and_the_unfrozen_block_moved(run: Path) -> None:
    trained = load_file(rank_dir(run, 0) / "trained.safetensors")
    base = {name: param.detach() for name, param in tiny_bert().named_parameters()}
    late = trainable_names(1) - trainable_names(0)
    assert late and all(name.startswith("bert.encoder.layer.2.") for name in late)
    for name, value in base.items():
        if name in trainable_names(1):
            assert not torch.equal(trained[name], value), f"{name} did not train"
        else:
            assert torch.equal(trained[name], value), f"frozen {name} changed"


def test_parameters_from_before_sharding_are_released(results: list[dict[str, Any]], single: tuple) -> None:
    """release_tensors: no plan keeps the whole pre-sharding parameters alive (the unsharded run keeps them)."""
    assert all(result["freed"] for result in results)
    assert single[1]["freed"] is False


def test_delta_from_the_sharded_run_gives_the_same_logits_on_an_unsharded_base(
    run: Path, results: list[dict[str, Any]]
) -> None:
    config = read_delta_config(run / "delta")
    assert set(config["tensors"]) == trainable_names(1)
    model = tiny_bert().eval()
    load_delta(model, run / "delta")
    with torch.no_grad():
        logits = model(**PROBE).logits
    for result in results:
        torch.testing.assert_close(logits, torch.tensor(result["logits"]), rtol=0, atol=1e-6)


def test_delta_loads_into_a_sharded_base_by_broadcast(run: Path) -> None:
    trained = load_file(rank_dir(run, 0) / "trained.safetensors")
    loaded = load_file(rank_dir(run, 0) / "loaded.safetensors")
    assert set(loaded) == set(trained)
    assert all(torch.equal(loaded[name], trained[name]) for name in trained)


def test_loading_onto_another_base_is_refused_on_every_rank(results: list[dict[str, Any]]) -> None:
    refusals = [result["refusal"] for result in results]
    assert refusals[0] is not None and refusals[0] == refusals[1]
    assert "was made for another base" in refusals[0]


def test_gradients_and_optimizer_state_only_for_what_trains(results: list[dict[str, Any]]) -> None:
    for result in results:
        memory = result["memory"]
        assert memory["engine"] == "fsdp2" and memory["gradient_bytes"] > 0
        assert memory["gradient_bytes"] <= memory["gradient_limit_bytes"] + PADDING_SLACK
        assert memory["optimizer_state_bytes"] <= memory["optimizer_state_limit_bytes"] + PADDING_SLACK
        assert memory["gradient_limit_bytes"] < memory["trainable_bytes"]  # sharded: each rank holds a part


def test_unfreezing_a_unit_frozen_at_its_first_forward_under_mixed_precision(results: list[dict[str, Any]]) -> None:
    """FSDP2 keeps each unit's gradient dtypes from its first forward: plain flags fail, apply_phase works."""
    for result in results:
        assert result["mixed_precision"]["apply_phase"] == "ok"
        assert "attempting to assign a gradient with dtype" in result["mixed_precision"]["apply_plan"]
