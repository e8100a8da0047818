"""Recipes in a hand-written Accelerate loop.

```python
accelerator = Accelerator()
freeze = FreezeController(accelerator, model, "gradual_unfreeze", lr=1e-4)
model, optimizer, train_dl = freeze.prepare(train_dl)
for batch in train_dl:
    accelerator.backward(model(**batch).loss)
    freeze.sync_gradients()                      # before clipping: keeps DDP ranks identical after an unfreeze
    accelerator.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    freeze.step()                                # or freeze.step(metrics) after an evaluation
freeze.save_delta("out/delta")                   # on every rank: under FSDP or ZeRO-3 they gather, rank 0 writes
```

The recipe is applied when the controller is built; the optimizer covers every tensor that trains in any
phase, as ``FreezeTrainer``'s does. Under FSDP (Accelerate's FSDP1 or FSDP2 plugin) ``prepare`` takes the
sharded path: phases set flags through ``hf_freeze.fsdp.apply_phase``, and FSDP1 gets its optimizer over the
wrapped model's flat parameters. Under DeepSpeed (Accelerate's DeepSpeed plugin) the engine holds only what
trains when ``prepare`` builds it (``hf_freeze.deepspeed``): the optimizer covers the phases reached so far, a
later phase that unfreezes more is refused by ``step`` with a ``RecipeError`` (continue in a new run on the base
with the delta loaded, ``FreezeController(..., phase=k)``), and ``save_delta`` gathers ZeRO-3 partitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from hf_freeze.deepspeed import (
    check_next_phase,
    check_phase_change,
    engine_param_groups,
    export_delta,
    is_deepspeed_engine,
)
from hf_freeze.delta import save_delta
from hf_freeze.fingerprint import record_base_samples
from hf_freeze.fsdp import adopt_sharded_model, is_fsdp, optimizer_groups, save_sharded_delta
from hf_freeze.grad_sync import LateGradSync
from hf_freeze.optim import decay_parameter_names, param_groups
from hf_freeze.phases import PhaseController, phase_plans
from hf_freeze.plan import Plan
from hf_freeze.recipe import Recipe


class FreezeController:
    """Applies a recipe, builds the optimizer, prepares with an ``Accelerator`` and advances phases."""

    def __init__(
        self,
        accelerator: Accelerator,
        model: nn.Module,
        recipe: Recipe | dict | str,
        *,
        lr: float,
        weight_decay: float = 0.0,
        phase: int = 0,
        optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
        **optimizer_kwargs: Any,
    ):
        self.accelerator = accelerator
        self.recipe = Recipe.coerce(recipe)
        self.phases = PhaseController(model, self.recipe, phase_plans(model, self.recipe))
        self.phases.load_state_dict({"phase": phase})  # sets that phase's flags
        record_base_samples(model)  # a delta saved once FSDP or ZeRO-3 shards the model needs its base samples
        self.model = model
        self.wrapped: Any = model  # what prepare returns for the model (DDP, FSDP, a DeepSpeed engine)
        self._group_args = (lr, weight_decay, decay_parameter_names(model))
        self._optimizer_args = (optimizer_cls, {"lr": lr, **optimizer_kwargs})
        self.optimizer = optimizer_cls(self._param_groups(), lr=lr, **optimizer_kwargs)
        self.global_step = 0
        self._late_sync: LateGradSync | None = None

    def _param_groups(self) -> list[dict[str, Any]]:
        """Every phase's groups, or under DeepSpeed those of the phases reached so far (a group all frozen when
        ZeRO builds it is never trained, and ZeRO-1/2 crash on it: ``hf_freeze.deepspeed.engine_param_groups``)."""
        plans, recipe = self.phases.plans, self.recipe
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            return engine_param_groups(plans, recipe, *self._group_args, phase=self.phases.phase)
        return param_groups(plans, recipe, *self._group_args)

    def prepare(self, *objects: Any) -> tuple[Any, ...]:
        """``accelerator.prepare(model, optimizer, *objects)``; returns them prepared, in that order.

        Under FSDP1 the model is wrapped first and the optimizer rebuilt over what the wrapped model holds
        (Accelerate does not remap an optimizer onto FSDP1's flat parameters); under FSDP, phases then set flags
        through the engine (``hf_freeze.fsdp.adopt_sharded_model``).
        """
        if self.accelerator.distributed_type == DistributedType.FSDP and not self.accelerator.is_fsdp2:
            model = self.accelerator.prepare(self.model)
            groups = optimizer_groups(model, self.phases.plans, self.recipe, *self._group_args)
            optimizer_cls, optimizer_kwargs = self._optimizer_args
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            rest = self.accelerator.prepare(self.optimizer, *objects)
            prepared = (model, *(rest if objects else (rest,)))
        else:
            prepared = self.accelerator.prepare(self.model, self.optimizer, *objects)
        if isinstance(prepared[0], nn.parallel.DistributedDataParallel):
            self._late_sync = LateGradSync(self.model)
        adopt_sharded_model(self.phases, prepared[0])
        self.wrapped = prepared[0]
        return prepared

    def save_delta(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the delta of what trained; call it on every rank. Under FSDP or DeepSpeed every rank gathers what
        trains and rank 0 writes (``hf_freeze.fsdp.save_sharded_delta``, ``hf_freeze.deepspeed.export_delta``);
        otherwise the main process writes."""
        model = self.phases.model
        if is_deepspeed_engine(self.wrapped):
            return export_delta(self.wrapped, path, recipe=self.recipe.to_dict(), **kwargs)
        if is_fsdp(model):
            return save_sharded_delta(model, path, recipe=self.recipe.to_dict(), **kwargs)
        if self.accelerator.is_main_process:
            save_delta(self.accelerator.unwrap_model(model), path, recipe=self.recipe.to_dict(), **kwargs)
        self.accelerator.wait_for_everyone()
        return Path(path)

    @property
    def phase(self) -> int:
        """The current phase index."""
        return self.phases.phase

    @property
    def plan(self) -> Plan:
        """The current phase's plan."""
        return self.phases.plan

    def sync_gradients(self) -> None:
        """Average, across ranks, the gradients of tensors unfrozen after wrapping. Call before clipping."""
        if self._late_sync is not None and self.accelerator.sync_gradients:
            self._late_sync.sync(self.model)

    def step(self, metrics: dict[str, float] | None = None, epoch: float | None = None) -> bool:
        """Count an optimizer step (without ``metrics``) or an evaluation (with them); advance the phase when
        its trigger fires. Returns whether the phase changed. Under DeepSpeed a phase that trains what the engine
        does not hold raises a ``RecipeError`` instead."""
        if metrics is None:
            self.global_step += 1
        if not self.phases.should_advance(self.global_step, epoch or 0.0, metrics):
            return False
        check_next_phase(self.wrapped, self.phases)
        self.phases.advance(self.global_step, epoch or 0.0)
        self.accelerator.log(self.phases.event(), step=self.global_step)
        return True

    def state_dict(self) -> dict[str, Any]:
        """For ``accelerator.register_for_checkpointing``: the phase and step count."""
        return {"phase": self.phases.state_dict(), "global_step": self.global_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the phase (and its flags) and the step count; under DeepSpeed, refuse a phase that trains
        what the engine does not hold."""
        if is_deepspeed_engine(self.wrapped):
            check_phase_change(self.wrapped, self.phases.plans[state["phase"]["phase"]])
        self.phases.load_state_dict(state["phase"])
        self.global_step = state["global_step"]
