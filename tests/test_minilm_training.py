"""FreezeTrainer on the real pretrained all-MiniLM-L6-v2: the seed's two-phase example, and activation
checkpointing that makes a frozen prefix pay no backward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentences import sentence_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

from hf_freeze import FreezeTrainer, apply_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


def _model(minilm_path) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)


def _accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def _args(tmp_path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    return TrainingArguments(**{**values, **overrides})


TWO_PHASE = {
    "name": "head_then_encoder",
    "default": "frozen",
    "rules": [{"select": "@head", "trainable": True}],
    "phases": [
        {"name": "head", "until": {"metric": "eval_accuracy", "above": 0.85}},
        {"name": "encoder", "rules": [{"select": "@encoder", "trainable": True}], "lr_scale": 0.01},
    ],
}


class _EncoderWatch(TrainerCallback):
    """After every optimizer step: did any encoder weight move from its pretrained value?"""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.initial = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("bert.encoder.")}
        self.moved_at_step: dict[int, bool] = {}
        self.evaluations: list[tuple[int, float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        params = dict(self.model.named_parameters())
        moved = any(not torch.equal(params[name], value) for name, value in self.initial.items())
        self.moved_at_step[state.global_step] = moved

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluations.append((state.global_step, metrics["eval_accuracy"]))


def test_two_phase_head_then_encoder_switches_at_the_passing_evaluation(tmp_path, minilm_path, tokenizer):
    model = _model(minilm_path)
    watch = _EncoderWatch(model)
    trainer = FreezeTrainer(
        model=model,
        args=_args(tmp_path, max_steps=16, learning_rate=5e-3, eval_strategy="steps", eval_steps=2),
        recipe=TWO_PHASE,
        train_dataset=sentence_dataset(tokenizer, "train"),
        eval_dataset=sentence_dataset(tokenizer, "eval"),
        compute_metrics=_accuracy,
        callbacks=[watch],
    )
    trainer.train()
    passing = [step for step, accuracy in watch.evaluations if accuracy > 0.85]
    assert passing, f"the head never passed the threshold: {watch.evaluations}"
    switch = passing[0]
    events = [entry for entry in trainer.state.log_history if "hf_freeze/phase" in entry]
    assert [(event["hf_freeze/phase"], event["step"]) for event in events] == [(1, switch)]
    assert switch < 16, "no step was left to train the encoder"
    assert not any(moved for step, moved in watch.moved_at_step.items() if step <= switch)
    assert watch.moved_at_step[16]
    encoder_lrs = {group["lr"] for group in trainer.optimizer.param_groups if group["hf_freeze_phase"] == 1}
    head_lrs = {group["lr"] for group in trainer.optimizer.param_groups if group["hf_freeze_phase"] == 0}
    assert max(encoder_lrs) == pytest.approx(min(head_lrs) * 0.01)


class _BackwardProbe:
    """Counts backward passes through each encoder block."""

    def __init__(self, model: torch.nn.Module):
        self.calls: dict[int, int] = {}
        for index, block in enumerate(model.bert.encoder.layer):
            block.register_full_backward_hook(self._counter(index))

    def _counter(self, index: int):
        def hook(module, grad_input, grad_output):
            self.calls[index] = self.calls.get(index, 0) + 1

        return hook


def _train_checkpointed(tmp_path, model, tokenizer, recipe: str, reentrant: bool) -> None:
    """Two steps of FreezeTrainer with activation checkpointing on."""
    args = _args(
        tmp_path,
        max_steps=2,
        learning_rate=1e-2,
        activation_checkpointing=True,
        activation_checkpointing_kwargs={"use_reentrant": reentrant},
    )
    FreezeTrainer(model=model, args=args, recipe=recipe, train_dataset=sentence_dataset(tokenizer, "train")).train()


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_with_frozen_body_runs_no_backward_through_frozen_blocks(
    tmp_path, minilm_path, tokenizer, reentrant
):
    model = _model(minilm_path)
    probe = _BackwardProbe(model)
    head_before = model.classifier.weight.detach().clone()
    _train_checkpointed(tmp_path, model, tokenizer, "train_head_only", reentrant)
    assert probe.calls == {}
    assert not torch.equal(model.classifier.weight, head_before)


def test_reentrant_checkpointing_still_trains_the_top_blocks(tmp_path, minilm_path, tokenizer):
    model = _model(minilm_path)
    probe = _BackwardProbe(model)
    top_before = model.bert.encoder.layer[5].output.dense.weight.detach().clone()
    _train_checkpointed(tmp_path, model, tokenizer, "train_top_blocks", reentrant=True)
    assert set(probe.calls) == {4, 5}
    assert not torch.equal(model.bert.encoder.layer[5].output.dense.weight, top_before)


def test_plain_trainer_with_checkpointing_pays_backward_through_frozen_blocks(tmp_path, minilm_path, tokenizer):
    """The control: without hf_freeze, the same freeze sends gradients through every frozen block."""
    model = _model(minilm_path)
    apply_recipe(model, "train_head_only")
    probe = _BackwardProbe(model)
    trainer = Trainer(
        model=model,
        args=_args(tmp_path, max_steps=1, activation_checkpointing=True),
        train_dataset=sentence_dataset(tokenizer, "train"),
    )
    trainer.train()
    assert set(probe.calls) == set(range(6))
