"""FreezeTrainer and FreezeController pick the FSDP path when Accelerate shards (issue 6: "the Trainer and the
Accelerate helper pick the right path for the distributed type in use").

One ``accelerate launch`` of ``tests/workers/fsdp_accelerate.py`` (two ranks, Accelerate's own FSDP path
forced on CPU as DESIGN section 7 describes): FreezeTrainer on FSDP2, the README's FreezeController loop on
FSDP2, and the same loop on FSDP1 with flat parameters and ``trainable_wrap_policy``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_ddp import NOISE_ONLY
from trainer_runs import one_process_run
from workers.common import rank_dir, read_parameters
from workers.ddp_train import tiny_bert, trainable_names
from workers.fsdp_common import launch_worker, read_results

from hf_freeze.delta import load_delta

pytestmark = pytest.mark.slow

RUNS = ("trainer", "controller", "controller_fsdp1")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return launch_worker("fsdp_accelerate.py", tmp_path_factory.mktemp("fsdp_accelerate"))


@pytest.fixture(scope="module")
def results(run: Path) -> list[dict[str, Any]]:
    return read_results(run)


def close_except_noise(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for name, value in expected.items():
        if name not in NOISE_ONLY:
            torch.testing.assert_close(actual[name], value, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", RUNS)
def test_each_run_was_sharded_reached_phase_1_and_kept_state_to_the_limit(results: list, name: str) -> None:
    engine = "fsdp1" if name.endswith("fsdp1") else "fsdp2"
    for result in results:
        run = result[name]
        assert result["world_size"] == 2 and run["engine"] == engine and run["phase"] == 1
        memory = run["memory"]
        assert 0 < memory["optimizer_state_bytes"] <= memory["optimizer_state_limit_bytes"] + 64


@pytest.mark.parametrize("name", RUNS)
def test_each_rank_reports_its_memory_under_its_engine(results: list, name: str) -> None:
    engine = "fsdp1" if name.endswith("fsdp1") else "fsdp2"
    for result in results:
        report = result[name]["memory_report"]
        assert report.startswith(f"memory on rank {result['rank']} of 2 ({engine}): parameters "), report
        if name == "trainer":  # printed while gradients exist: gradients and optimizer state at the limit
            assert report.count("within it") == 2, report


@pytest.mark.parametrize("name", RUNS)
def test_frozen_unchanged_trained_moved_and_the_delta_is_the_trained_model(run: Path, name: str) -> None:
    trained = load_file(rank_dir(run, 0) / f"{name}.safetensors")
    base = {key: param.detach() for key, param in tiny_bert().named_parameters()}
    for key, value in base.items():
        assert torch.equal(trained[key], value) != (key in trainable_names(1)), key
    model = tiny_bert()
    load_delta(model, run / name)
    assert all(torch.equal(param.detach(), trained[key]) for key, param in model.named_parameters())


def test_freeze_trainer_on_fsdp2_equals_one_process(run: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    single = read_parameters(one_process_run(tmp_path_factory))
    close_except_noise(load_file(rank_dir(run, 0) / "trainer.safetensors"), single)
    state = json.loads((run / "trainer" / "hf_freeze_state.json").read_text())
    assert state["phase"]["phase"] == 1


def test_controller_on_fsdp1_flat_parameters_equals_fsdp2(run: Path) -> None:
    fsdp2 = load_file(rank_dir(run, 0) / "controller.safetensors")
    close_except_noise(load_file(rank_dir(run, 0) / "controller_fsdp1.safetensors"), fsdp2)
