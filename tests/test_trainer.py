"""FreezeTrainer in one process: frozen tensors stay bitwise, optimizer state covers exactly what trains,
phases switch when their trigger fires, eval_frozen and activation checkpointing behave."""

from __future__ import annotations

import pytest
import torch
from tiny import random_text_dataset, tiny_model
from transformers import TrainerCallback, TrainingArguments

from hf_freeze import FreezeTrainer, RecipeError
from hf_freeze.optim import optimizer_state_bytes


def _args(tmp_path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=4,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
    )
    return TrainingArguments(**{**values, **overrides})


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def test_freeze_dense_kernels_trains_exactly_the_plan(tmp_path):
    model = tiny_model("bert")
    before = _snapshot(model)
    trainer = FreezeTrainer(
        model=model, args=_args(tmp_path), recipe="freeze_dense_kernels", train_dataset=random_text_dataset()
    )
    trainer.train()
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable == set(trainer.phases.plan.trainable)
    for name, param in model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), f"{name} should have moved"
        else:
            assert torch.equal(param, before[name]), f"{name} should be bitwise unchanged"
    kernels = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert {f"{name}.weight" for name in kernels} - {"classifier.weight"} <= set(before) - trainable
    state_params = {id(param) for param in trainer.optimizer.state}
    assert state_params == {id(param) for param in model.parameters() if param.requires_grad}
    trainable_elements = sum(param.numel() for param in model.parameters() if param.requires_grad)
    assert optimizer_state_bytes(trainer.optimizer) / (8 * trainable_elements) == 1.0


def test_recipe_is_required_and_checked_before_anything_changes(tmp_path):
    model = tiny_model("gpt2")
    flags = {name: param.requires_grad for name, param in model.named_parameters()}
    with pytest.raises(RecipeError, match="GPT2LMHeadModel"):
        FreezeTrainer(model=model, args=_args(tmp_path), recipe="freeze_encoder")
    with pytest.raises(RecipeError, match="recipe="):
        FreezeTrainer(model=model, args=_args(tmp_path))
    assert flags == {name: param.requires_grad for name, param in model.named_parameters()}


PHASED = {
    "name": "head_then_top",
    "default": "frozen",
    "rules": [{"select": "@head", "trainable": True}],
    "phases": [
        {"name": "head", "until": {"step": 2}},
        {"name": "top", "rules": [{"select": "@blocks[-1:]", "trainable": True}], "lr_scale": 0.5},
    ],
}


class _Record(TrainerCallback):
    """Snapshots of the parameters after every optimizer step."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(_snapshot(self.model))


def test_step_phase_unfreezes_top_block_with_its_own_group(tmp_path):
    model = tiny_model("bert")
    before = _snapshot(model)
    record = _Record(model)
    trainer = FreezeTrainer(
        model=model,
        args=_args(tmp_path, max_steps=4),
        recipe=PHASED,
        train_dataset=random_text_dataset(),
        callbacks=[record],
    )
    top = [name for name in before if name.startswith("bert.encoder.layer.2.")]
    assert not any(param.requires_grad for name, param in model.named_parameters() if name in top)
    optimizer = trainer.create_optimizer()
    phases = sorted({group["hf_freeze_phase"] for group in optimizer.param_groups})
    assert phases == [0, 1]
    assert {group["lr"] for group in optimizer.param_groups if group["hf_freeze_phase"] == 1} == {0.5e-2}
    trainer.train()
    # steps 1-2 run in phase 0: the top block is bitwise unchanged; it moves from step 3 on.
    assert all(torch.equal(record.steps[1][name], before[name]) for name in top)
    assert all(not torch.equal(record.steps[3][name], before[name]) for name in top if "LayerNorm" not in name)
    events = [entry for entry in trainer.state.log_history if "hf_freeze/phase" in entry]
    assert [(event["hf_freeze/phase"], event["step"]) for event in events] == [(1, 2)]
    assert events[0]["hf_freeze/phase_name"] == "top"
    frozen = [name for name in before if not name.startswith(("bert.encoder.layer.2.", "classifier"))]
    assert all(torch.equal(param, before[name]) for name, param in model.named_parameters() if name in frozen)


def test_phases_may_only_unfreeze(tmp_path):
    refreeze = {
        "rules": [{"select": "@head", "trainable": True}],
        "default": "frozen",
        "phases": [
            {"name": "a", "until": {"step": 1}},
            {"name": "b", "rules": [{"select": "@head", "trainable": False, "optional": False}]},
        ],
    }
    with pytest.raises(RecipeError, match="phases may only unfreeze"):
        FreezeTrainer(model=tiny_model("bert"), args=_args(tmp_path), recipe=refreeze)


class _TrainingModes(TrainerCallback):
    """Records, at every training forward, which modules are in training mode."""

    def __init__(self, model: torch.nn.Module):
        self.modes: list[dict[str, bool]] = []
        model.register_forward_hook(self._hook)
        self.model = model

    def _hook(self, module, args, output):
        if module.training:
            self.modes.append({name: sub.training for name, sub in self.model.named_modules()})


def test_eval_frozen_keeps_frozen_modules_in_eval_mode(tmp_path):
    model = tiny_model("bert")
    recipe = {"eval_frozen": True, "rules": [{"select": "@encoder", "trainable": False}]}
    trainer = FreezeTrainer(
        model=model, args=_args(tmp_path, max_steps=2), recipe=recipe, train_dataset=random_text_dataset()
    )
    modes = _TrainingModes(model)
    trainer.train()
    assert modes.modes, "no training forward was recorded"
    for seen in modes.modes:
        assert not seen["bert.encoder"] and not seen["bert.encoder.layer.0.attention.self.dropout"]
        assert seen["bert.embeddings.dropout"] and seen["dropout"]
