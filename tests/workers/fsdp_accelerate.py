"""FreezeTrainer and FreezeController on Accelerate's own FSDP2 path, on CPU (DESIGN section 7's recipe).

Accelerate turns an FSDP request on CPU into DDP, so after the ``Accelerator`` exists its state is set to FSDP
with an FSDP2 plugin (``sharded_accelerator``), as DESIGN section 7 describes. Two runs, one after the other,
under ``accelerate launch`` (two ranks), each with the tiny BERT and recipe of ``workers.ddp_train`` (top
block unfrozen after ``SWITCH_STEP``):

- ``trainer``: ``FreezeTrainer`` with ``workers.ddp_train.training_args`` (the DDP test's one-process run is
  the reference); ``save_model`` writes its delta into ``out/trainer``;
- ``controller``: the README loop of ``FreezeController`` (``workers.accelerate_loop``'s), its delta written
  by ``freeze.save_delta`` into ``out/controller``;
- ``controller_fsdp1``: the same loop on Accelerate's FSDP1 path with flat parameters and
  ``trainable_wrap_policy`` (FreezeController wraps first, then builds the optimizer over the flat parameters).

Rank 0 writes ``{run}.safetensors`` (every parameter, gathered); every rank writes ``result.json`` with the
phase reached, whether the model really was FSDP2-sharded, the memory figures and the ``memory_report`` line
(for ``trainer`` the one ``MemoryReportCallback`` printed at step 2, for the loops one after the last step).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin, PartialState
from accelerate.utils import DistributedType
from tiny import random_text_dataset

from hf_freeze import FreezeTrainer
from hf_freeze.accelerate import FreezeController
from hf_freeze.fsdp1 import trainable_wrap_policy
from hf_freeze.memory import MemoryReportCallback, memory_line, memory_stats
from hf_freeze.sharding import sharding_engine
from workers.ddp_train import RECIPE, ROWS, tiny_bert, training_args
from workers.fsdp_common import full_parameters, init_gloo, write_rank_result, write_tensors

BATCH = 4  # per rank, as the DDP test's two-process run
MAX_STEPS = 7


def sharded_accelerator(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin | None = None) -> Accelerator:
    """``accelerator`` switched to Accelerate's FSDP path (on CPU it would otherwise be DDP); FSDP2 by default."""
    plugin = plugin or FullyShardedDataParallelPlugin(fsdp_version=2, cpu_ram_efficient_loading=False)
    accelerator.state.distributed_type = DistributedType.FSDP
    # Every later AcceleratorState() copies PartialState's shared state over its own (accelerate 1.16), which would
    # quietly turn this back into MULTI_CPU (and accelerator.clip_grad_norm_ into a per-rank norm under FSDP1).
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    if plugin.fsdp_version == 1:
        accelerator.state.device = torch.device("cpu")
    return accelerator


def fsdp1_plugin(model: torch.nn.Module) -> FullyShardedDataParallelPlugin:
    """FSDP1 with flat parameters (``use_orig_params=False``) and hf_freeze's trainable wrap policy."""
    return FullyShardedDataParallelPlugin(
        fsdp_version=1,
        use_orig_params=False,
        auto_wrap_policy=trainable_wrap_policy(model, RECIPE),
        sync_module_states=False,
        cpu_ram_efficient_loading=False,
    )


def run_trainer(out: Path) -> dict[str, Any]:
    """FreezeTrainer through the phase change on FSDP2; ``save_model`` writes the delta."""
    args = training_args(out / "trainer-run", BATCH, MAX_STEPS, None)
    trainer = FreezeTrainer(model=tiny_bert(), args=args, recipe=RECIPE, train_dataset=random_text_dataset(ROWS))
    sharded_accelerator(trainer.accelerator)
    trainer.is_fsdp_enabled = True
    report = MemoryReportCallback(trainer)  # the callback scripts/train.py adds
    trainer.add_callback(report)
    trainer.train()
    trainer.save_model(str(out / "trainer"))
    write_tensors(out, args.process_index, "trainer", full_parameters(trainer.model))
    engine = sharding_engine(trainer.model)
    memory = memory_stats(trainer.model, trainer.optimizer)
    return {"phase": trainer.phases.phase, "engine": engine, "memory": memory, "memory_report": report.report}


def run_controller(out: Path, name: str) -> dict[str, Any]:
    """The README's FreezeController loop on FSDP2 (``name`` 'controller') or FSDP1 with flat parameters
    ('controller_fsdp1'); ``freeze.save_delta`` writes the delta into ``out/name``."""
    model = tiny_bert().train()
    dataset = random_text_dataset(48).with_format("torch")
    train_dl = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=False)
    plugin = fsdp1_plugin(model) if name.endswith("fsdp1") else None
    accelerator = sharded_accelerator(Accelerator(cpu=True), plugin)
    freeze = FreezeController(accelerator, model, RECIPE, lr=1e-3)
    model, optimizer, train_dl = freeze.prepare(train_dl)
    for batch in train_dl:
        accelerator.backward(model(**batch).loss)
        freeze.sync_gradients()
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        freeze.step()
    freeze.save_delta(out / name)
    write_tensors(out, accelerator.process_index, name, full_parameters(model))
    memory = memory_stats(model, optimizer)
    return {
        "phase": freeze.phase,
        "engine": sharding_engine(model),
        "memory": memory,
        "memory_report": memory_line(memory),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    out = Path(parser.parse_args(argv).out)
    trainer = run_trainer(out)
    controller = run_controller(out, "controller")
    controller_fsdp1 = run_controller(out, "controller_fsdp1")
    rank, world_size = init_gloo()
    write_rank_result(out, rank, world_size, trainer=trainer, controller=controller, controller_fsdp1=controller_fsdp1)


if __name__ == "__main__":
    main()
