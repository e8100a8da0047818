"""``FreezeTrainer``: a ``transformers.Trainer`` that follows a recipe through the whole run.

- The recipe is applied in ``__init__``, before the optimizer exists and before any wrapping.
- ``create_optimizer`` builds one optimizer over every tensor that trains in any phase (``hf_freeze.optim``).
- Phases advance from a callback: step and epoch triggers after optimizer steps, metric triggers at the
  evaluation that passes them. Each change is logged into ``state.log_history`` (so every ``report_to``
  integration sees it) and keeps DDP ranks identical (``hf_freeze.grad_sync``).
- Checkpoints and ``save_model`` write a delta (``hf_freeze.delta``) plus the phase state;
  ``resume_from_checkpoint`` restores the phase and refuses a checkpoint of another recipe or base.
- Under FSDP and DeepSpeed (``TrainingArguments(deepspeed=...)`` or ``accelerate launch`` with a DeepSpeed
  config), ``save_model`` gathers only what trains, on every rank, and rank 0 writes. DeepSpeed's engine holds
  only what trains when it is built (``hf_freeze.deepspeed``): its optimizer gets the current phase's groups, a
  later phase that unfreezes more stops the run with a ``RecipeError`` saying so (continue with a new run:
  ``FreezeTrainer(..., phase=k)`` on the base with the delta loaded), its checkpoints leave frozen tensors out
  and resume loads them non-strictly.
- With activation checkpointing, a frozen prefix pays no backward (``hf_freeze.checkpointing``);
  ``eval_frozen: true`` keeps fully frozen modules in eval mode (``hf_freeze.eval_mode``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers.integrations.deepspeed import deepspeed_load_checkpoint
from transformers.trainer import SCHEDULER_NAME
from transformers.trainer_callback import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from hf_freeze.checkpointing import FrozenPrefixGuard, is_checkpointing
from hf_freeze.deepspeed import (
    check_next_phase,
    engine_param_groups,
    export_delta,
    is_deepspeed_engine,
    late_unfreeze_messages,
)
from hf_freeze.deepspeed import save_checkpoint as save_deepspeed_checkpoint
from hf_freeze.delta import CONFIG_NAME, read_delta_config, save_delta
from hf_freeze.errors import RecipeError
from hf_freeze.eval_mode import FrozenEvalMode
from hf_freeze.fingerprint import record_base_samples
from hf_freeze.fsdp import adopt_sharded_model, is_fsdp, load_delta_into, optimizer_groups, save_sharded_delta
from hf_freeze.grad_sync import LateGradSync, world_size
from hf_freeze.names import canonical_name
from hf_freeze.phases import PhaseController, phase_plans
from hf_freeze.recipe import Recipe

logger = logging.getLogger(__name__)

PHASE_STATE_NAME = "hf_freeze_state.json"


class FreezeTrainer(transformers.Trainer):
    """A ``Trainer`` that applies ``recipe`` (a name, path, dict or ``Recipe``) and keeps it correct.

    ``phase``: start in that phase of the recipe (its flags, its trigger counted from step 0), e.g. to continue
    under DeepSpeed after a run that stopped at a phase change, on the base with that run's delta loaded
    (``hf_freeze.load_model_with_delta``). Every other argument is ``transformers.Trainer``'s.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *args: Any,
        recipe: Recipe | dict | str | None = None,
        phase: int = 0,
        **kwargs: Any,
    ):
        if recipe is None:
            raise RecipeError("FreezeTrainer needs recipe= (a bundled name, a .yaml/.json path, a dict or a Recipe).")
        if model is None:
            raise RecipeError("FreezeTrainer needs the model itself (model_init is not supported).")
        self.recipe = Recipe.coerce(recipe)
        plans = phase_plans(model, self.recipe)  # every recipe error is raised here, before anything changes
        self.phases = PhaseController(model, self.recipe, plans)
        self.phases.load_state_dict({"phase": phase})  # sets that phase's flags
        record_base_samples(model)  # a delta saved once FSDP or ZeRO-3 shards the model needs its base samples
        super().__init__(model, *args, **kwargs)
        self._late_sync: LateGradSync | None = None
        self._eval_mode = FrozenEvalMode(model) if self.recipe.eval_frozen else None
        self._prefix_guard: FrozenPrefixGuard | None = None
        self.add_callback(_PhaseCallback(self))

    # ---- optimizer ----

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """One optimizer over every tensor that trains in any phase (under DeepSpeed: in the phases reached so
        far); one group per (phase, decay). Under DeepSpeed ``deepspeed_init`` calls it (unless the DeepSpeed
        config has its own ``optimizer`` section, whose optimizer takes what requires grad: the same tensors)."""
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            decay = {canonical_name(name) for name in self.get_decay_parameter_names(opt_model)}
            groups = self._optimizer_groups(opt_model, decay)
            if self.optimizer_cls_and_kwargs is not None:
                optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
            else:
                optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _optimizer_groups(self, model: nn.Module, decay: set[str]) -> list[dict[str, Any]]:
        """The groups for ``model``: every phase's (FSDP1 wraps before this: its flat parameters, otherwise the
        tensors by name), or under DeepSpeed those of the phases reached so far (a group all frozen when ZeRO
        builds it is never trained, and ZeRO-1/2 crash on it: ``hf_freeze.deepspeed.engine_param_groups``)."""
        lr, weight_decay, plans = self.args.learning_rate, self.args.weight_decay, self.phases.plans
        if self.is_deepspeed_enabled:
            return engine_param_groups(plans, self.recipe, lr, weight_decay, decay, self.phases.phase)
        return optimizer_groups(model, plans, self.recipe, lr, weight_decay, decay)

    # ---- training ----

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``, with two DDP defaults decided on one probe batch (RNG untouched).

        - ``find_unused_parameters`` is False when every trainable tensor gets a gradient (unless set).
        - A model whose loss is a plain mean (it ignores ``num_items_in_batch``, e.g. sequence classification)
          is not scaled by the world size under ``average_tokens_across_devices``: the Trainer assumes a
          token-sum loss there, which doubles every gradient on two ranks.

        Under DeepSpeed a resumed run enters the checkpoint's phase before the engine is built.
        """
        batch = self._probe_batch() if world_size() > 1 else None
        if batch is not None:
            if self.args.ddp_find_unused_parameters is None and self.accelerator.ddp_handler:
                self.accelerator.ddp_handler.find_unused_parameters = not self._every_trainable_tensor_used(batch)
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
                self.model_accepts_loss_kwargs = self._loss_uses_num_items(batch)
        if self.is_deepspeed_enabled:
            self._enter_checkpoint_phase(resume_from_checkpoint)
            with _trainable_only_deepspeed_resume():
                return super().train(resume_from_checkpoint, *args, **kwargs)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _probe_batch(self) -> dict[str, Any] | None:
        """The first training batch of this rank's size, collated as the Trainer would, or None."""
        if self.train_dataset is None or not hasattr(self.train_dataset, "__getitem__"):
            return None
        collate = self._get_collator_with_removed_columns(self.data_collator, "probe")
        count = min(self.args.per_device_train_batch_size, len(self.train_dataset))
        return self._prepare_inputs(collate([self.train_dataset[index] for index in range(count)]))

    def _every_trainable_tensor_used(self, batch: dict[str, Any]) -> bool:
        """Does every trainable tensor get a gradient from ``batch``?"""
        trainable = [param for param in self.model.parameters() if param.requires_grad]
        with torch.random.fork_rng(devices=[]):
            loss = self.compute_loss(self.model, batch)
            grads = torch.autograd.grad(loss, trainable, allow_unused=True)
        return all(grad is not None for grad in grads)

    @torch.no_grad()
    def _loss_uses_num_items(self, batch: dict[str, Any]) -> bool:
        """Does the model's loss change with ``num_items_in_batch`` (a token-sum loss) or not (a mean)?"""
        was_training = self.model.training
        self.model.eval()
        try:
            losses = [self.compute_loss(self.model, batch, num_items_in_batch=torch.tensor(n)) for n in (1, 2)]
        finally:
            self.model.train(was_training)
        return not torch.equal(losses[0], losses[1])

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """``Trainer.training_step``, then (on the step that syncs) average the grads DDP does not know about."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._late_sync is not None and self.accelerator.sync_gradients:
            self._late_sync.sync(self.model)
        return loss

    def _on_train_begin(self) -> None:
        """After wrapping: remember what DDP registered; set up activation-checkpointing hooks."""
        adopt_sharded_model(self.phases, self.model)  # FSDP: phases through the engine, plans without tensors
        if isinstance(self.model_wrapped, nn.parallel.DistributedDataParallel):
            self._late_sync = LateGradSync(self.model)
        if is_checkpointing(self.model):
            kwargs = self.args.activation_checkpointing_kwargs or {}
            self._prefix_guard = FrozenPrefixGuard(self.model, reentrant=bool(kwargs.get("use_reentrant", False)))
        if is_deepspeed_engine(self.model_wrapped):  # say now what will stop this run, not hours later
            for message in late_unfreeze_messages(self.phases.plans[self.phases.phase :]):
                logger.warning("This run will stop at that phase change: %s", message)

    def _advance_phase(self, metrics: dict[str, float] | None = None) -> bool:
        """Enter the next phase if its trigger fires; log the event. Returns whether it changed."""
        state = self.state
        if not self.phases.should_advance(state.global_step, state.epoch or 0.0, metrics):
            return False
        check_next_phase(self.model_wrapped, self.phases)  # DeepSpeed: a RecipeError that stops the run
        self.phases.advance(state.global_step, state.epoch or 0.0)
        if self._eval_mode is not None:
            self._eval_mode.refresh()
        if self._prefix_guard is not None:
            self._prefix_guard.refresh()
        should_log = self.control.should_log  # Trainer.log resets it: keep this step's own training log
        self.log(self.phases.event())
        self.control.should_log = should_log
        return True

    # ---- checkpoints ----

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Under FSDP or DeepSpeed every rank gathers what trains (no frozen weight) and rank 0 writes the delta;
        the Trainer calls this on every rank (its ``_save`` runs on rank 0 only, where a gather would hang)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if is_deepspeed_engine(self.model_wrapped):
            export_delta(self.model_wrapped, output_dir, writer=self._write_delta)
        elif is_fsdp(self.model):
            save_sharded_delta(self.model, output_dir, writer=self._write_delta)
        else:
            super().save_model(output_dir, _internal_call)

    def _write_delta(self, model: nn.Module, path: str | os.PathLike, **delta: Any) -> None:
        """The ``writer`` for the gathering savers (``tensors`` and ``aliases`` gathered, or none): :meth:`_save`."""
        self._save(str(path), delta=delta)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Under DeepSpeed the engine's checkpoint leaves frozen tensors out (transformers does that only for PEFT
        models); the scheduler is saved as ``Trainer`` saves it."""
        if not is_deepspeed_engine(self.model_wrapped):
            return super()._save_optimizer_and_scheduler(output_dir)
        from accelerate.utils import DeepSpeedSchedulerWrapper  # exists only where DeepSpeed is installed

        save_deepspeed_checkpoint(self.model_wrapped, output_dir)
        if self.args.should_save and not isinstance(self.lr_scheduler, DeepSpeedSchedulerWrapper):
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None, delta: dict | None = None) -> None:
        """Write a delta (trainable tensors only) and the phase state instead of the full model.

        ``delta``: the gathered ``tensors`` and ``aliases`` of a sharded model (``save_model``).
        """
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        save_delta_into(self.model, output_dir, recipe=self.recipe.to_dict(), **(delta or {}))
        state = {"recipe": self.recipe.to_dict(), "phase": self.phases.state_dict()}
        Path(output_dir, PHASE_STATE_NAME).write_text(json.dumps(state, indent=2), encoding="utf-8")
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Restore the phase and the delta; refuse a checkpoint made with another recipe or base."""
        saved = self._saved_phase(resume_from_checkpoint)
        target = self.model if model is None else model
        adopt_sharded_model(self.phases, target)  # under FSDP this runs after wrapping, before on_train_begin
        self.phases.load_state_dict(saved)
        load_delta_into(target, resume_from_checkpoint)

    def _enter_checkpoint_phase(self, resume_from_checkpoint: str | bool | None) -> None:
        """Under DeepSpeed: enter the checkpoint's phase before ``deepspeed_init`` builds the optimizer (the
        Trainer never calls ``_load_from_checkpoint`` there; the engine's checkpoint brings the weights)."""
        checkpoint = resume_from_checkpoint
        if isinstance(checkpoint, bool):
            checkpoint = get_last_checkpoint(self.args.output_dir) if checkpoint else None
        if checkpoint is not None:  # a missing last checkpoint is left to Trainer.train's own error
            self.phases.load_state_dict(self._saved_phase(checkpoint))

    def _saved_phase(self, resume_from_checkpoint: str) -> dict[str, Any]:
        """The phase state of a FreezeTrainer checkpoint; refuses one of another recipe, or without a delta,
        before any flag changes."""
        state_file = Path(resume_from_checkpoint, PHASE_STATE_NAME)
        if not state_file.is_file():
            raise RecipeError(f"{resume_from_checkpoint} is not a FreezeTrainer checkpoint (no {PHASE_STATE_NAME}).")
        saved = json.loads(state_file.read_text(encoding="utf-8"))
        if saved.get("recipe") != self.recipe.to_dict():
            name = (saved.get("recipe") or {}).get("name")
            raise RecipeError(
                f"Checkpoint {resume_from_checkpoint} was made with recipe {name!r}, which differs from "
                f"{self.recipe.name!r}; resume with the same recipe."
            )
        read_delta_config(resume_from_checkpoint)  # a clear DeltaError before any flag changes
        return saved["phase"]

    def _load_best_model(self) -> None:
        """With ``load_best_model_at_end``, the best checkpoint is a delta too (under DeepSpeed: its engine's
        trainable-only checkpoint)."""
        if is_deepspeed_engine(self.model_wrapped):
            load_trainable_only_checkpoint(self.model_wrapped, self.state.best_model_checkpoint)
        else:
            load_delta_into(self.model, self.state.best_model_checkpoint)


def load_trainable_only_checkpoint(engine: Any, checkpoint_path: str, load_module_strict: bool = True) -> None:
    """transformers' ``deepspeed_load_checkpoint``, always with ``load_module_strict=False``: FreezeTrainer's
    DeepSpeed checkpoints hold no frozen tensor (``hf_freeze.deepspeed.save_checkpoint``), and transformers
    loads non-strictly for PEFT models only. Same signature, so it can stand in for it."""
    deepspeed_load_checkpoint(engine, checkpoint_path, load_module_strict=False)


@contextlib.contextmanager
def _trainable_only_deepspeed_resume() -> Iterator[None]:
    """While ``Trainer.train`` runs, its resume loads DeepSpeed checkpoints with :func:`load_trainable_only_checkpoint`
    (``transformers.trainer`` calls its module-level ``deepspeed_load_checkpoint``, strict unless PEFT)."""
    original = transformers.trainer.deepspeed_load_checkpoint
    transformers.trainer.deepspeed_load_checkpoint = load_trainable_only_checkpoint
    try:
        yield
    finally:
        transformers.trainer.deepspeed_load_checkpoint = original


def save_delta_into(model: nn.Module, folder: str | os.PathLike, **kwargs: Any) -> None:
    """``save_delta`` into a folder that other writers share, without replacing the folder.

    A Trainer checkpoint folder also receives the optimizer, the trainer state and every rank's RNG state
    (other ranks may create it first), and ``save_model()`` writes into ``output_dir`` next to the
    checkpoints; ``save_delta`` alone would refuse such a folder or swap it out whole. The delta is written
    complete next to ``folder``, then its files are moved in (each move atomic, ``delta_config.json`` last,
    so a reader never sees a config listing files that are not there yet); stale delta files go last.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.delta-") as tmp:
        written = save_delta(model, Path(tmp, "delta"), **kwargs)
        files = sorted(written.iterdir(), key=lambda file: file.name == CONFIG_NAME)
        names = {file.name for file in files}
        stale = [file for file in folder.glob("delta*.safetensors*") if file.name not in names]
        for file in files:
            os.replace(file, folder / file.name)
        for file in stale:
            file.unlink()


class _PhaseCallback(TrainerCallback):
    """Drives the phase controller from the Trainer's events."""

    def __init__(self, trainer: FreezeTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._on_train_begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._advance_phase()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.trainer._advance_phase(metrics or {})
