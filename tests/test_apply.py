"""apply_recipe / apply_plan on real tensors: the seed's example, atomicity, ``default: keep``, wrappers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_model
from torch import nn

from hf_freeze import RecipeError, applied_recipe, apply_plan, apply_recipe, plan

SEED_RECIPE = {"rules": [{"match": "0", "params": "kernel", "trainable": False}]}


def seed_model() -> nn.Sequential:
    """The seed's model: ``Sequential(Linear(100, 64), ReLU(), Linear(64, 10))``, seeded."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(100, 64), nn.ReLU(), nn.Linear(64, 10))


def train_two_steps(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Two AdamW steps on seeded random data, grads freed with ``set_to_none``."""
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        inputs = torch.randn(16, 100, generator=generator)
        labels = torch.randint(0, 10, (16,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()


def flags(model: nn.Module) -> dict[str, bool]:
    """``requires_grad`` of every parameter by name."""
    return {name: param.requires_grad for name, param in model.named_parameters()}


def mixed_flags(model: nn.Module) -> dict[str, bool]:
    """Set a mixed requires_grad pattern (every third tensor frozen) and return it."""
    for index, param in enumerate(model.parameters()):
        param.requires_grad_(index % 3 != 0)
    return flags(model)


@pytest.mark.parametrize("optimize_all", [False, True], ids=["trainable-only", "all-params"])
def test_seed_example(optimize_all: bool) -> None:
    """Layer 0's kernel is bitwise unchanged after two AdamW steps, its bias moved, state only for trainables.

    With ``optimize_all`` the optimizer is (naively) given every parameter: the frozen kernel's grad stays
    None, so AdamW neither moves it nor allocates state for it.
    """
    model = seed_model()
    planned = apply_recipe(model, SEED_RECIPE)
    assert planned.frozen == ["0.weight"]
    assert flags(model) == {"0.weight": False, "0.bias": True, "2.weight": True, "2.bias": True}
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    params = list(model.parameters()) if optimize_all else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    train_two_steps(model, optimizer)

    assert torch.equal(model[0].weight, before["0.weight"])
    assert model[0].weight.grad is None
    for name, param in model.named_parameters():
        if name != "0.weight":
            assert not torch.equal(param, before[name]), f"{name} did not move"
    trainable = {id(param) for param in model.parameters() if param.requires_grad}
    assert {id(param) for param in optimizer.state} == trainable
    assert all(int(state["step"]) == 2 for state in optimizer.state.values())


def test_apply_frees_grads_of_frozen_tensors() -> None:
    """A tensor frozen after a backward pass loses its grad (None, never zeros); trainable grads stay."""
    model = seed_model()
    F.cross_entropy(model(torch.randn(4, 100)), torch.tensor([0, 1, 2, 3])).backward()
    apply_recipe(model, {"rules": [{"match": "2", "trainable": False}]})
    assert model[2].weight.grad is None and model[2].bias.grad is None
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def test_apply_records_recipe_and_phase() -> None:
    """The applied (resolved) recipe and phase are recorded on the model."""
    model = seed_model()
    assert applied_recipe(model) is None
    apply_recipe(model, SEED_RECIPE)
    record = applied_recipe(model)
    assert record is not None and record["phase"] == 0
    assert record["recipe"]["rules"][0]["params"] == ["weight"] and record["recipe"]["rules"][0]["trainable"] is False


def test_failing_last_rule_changes_no_flag() -> None:
    """A recipe whose last rule fails leaves every flag of a mixed pattern as it was."""
    model = tiny_model("bert")
    before = mixed_flags(model)
    recipe = {
        "rules": [
            {"select": "@embeddings", "trainable": False},
            {"select": "@encoder", "trainable": True},
            {"match": r"bert\.encoder\.layer\.9", "trainable": False},
        ]
    }
    with pytest.raises(RecipeError, match=r"rule 3: selects no parameter of BertForSequenceClassification"):
        apply_recipe(model, recipe)
    assert flags(model) == before
    assert applied_recipe(model) is None


def test_apply_plan_rolls_back_when_a_flag_cannot_be_set() -> None:
    """If setting a flag fails midway (a tensor became integer after planning), earlier flags are restored."""
    model = seed_model()
    model[2].bias.requires_grad_(False)
    planned = plan(model, {"default": "trainable", "rules": [{"match": "0", "trainable": False}]})
    before = mixed_flags(model)
    model[2].bias.data = torch.zeros(10, dtype=torch.long)  # the last tensor can no longer require grad
    with pytest.raises(RuntimeError, match="floating point"):
        apply_plan(model, planned)
    assert flags(model) == before
    assert applied_recipe(model) is None


def test_apply_plan_sets_the_given_models_tensors() -> None:
    """apply_plan sets the flags of the model it is given (found by name), never those of the planned one."""
    planned_model, twin = seed_model(), seed_model()
    planned = plan(planned_model, SEED_RECIPE)
    planned_before = mixed_flags(planned_model)
    apply_plan(Holder(twin), planned)
    assert flags(twin) == {"0.weight": False, "0.bias": True, "2.weight": True, "2.bias": True}
    assert flags(planned_model) == planned_before


@pytest.mark.parametrize(
    "other",
    [
        nn.Sequential(nn.Linear(100, 64), nn.ReLU(), nn.Linear(64, 10), nn.Linear(10, 2)),
        nn.Sequential(nn.Linear(100, 64)),
    ],
    ids=["extra-tensor", "missing-tensor"],
)
def test_apply_plan_refuses_another_models_plan(other: nn.Module) -> None:
    """A plan whose tensor names differ from the model's is refused before any flag changes."""
    planned = plan(seed_model(), SEED_RECIPE)
    before = mixed_flags(other)
    with pytest.raises(RecipeError, match="made for another model"):
        apply_plan(other, planned)
    assert flags(other) == before


def test_default_keep_leaves_undecided_flags() -> None:
    """``default: keep``: what no rule selects keeps its requires_grad; selected tensors follow the rules."""
    model = seed_model()
    model[0].weight.requires_grad_(False)
    model[2].weight.requires_grad_(False)
    planned = apply_recipe(model, {"default": "keep", "rules": [{"match": "2", "params": "weight", "trainable": True}]})
    assert flags(model) == {"0.weight": False, "0.bias": True, "2.weight": True, "2.bias": True}
    assert "kept as it was" in planned.explain("0.weight")
    assert planned.explain("2.weight").startswith("2.weight: trainable by <dict>, rule 1")


class Holder(nn.Module):
    """A plain container whose child is called ``module`` (the name DDP gives the wrapped model)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


def test_module_prefix_is_stripped() -> None:
    """Names under a ``module.`` prefix are canonical: the seed recipe works on the wrapped model unchanged."""
    inner = seed_model()
    planned = apply_recipe(Holder(inner), SEED_RECIPE)
    assert planned.frozen == ["0.weight"]
    assert not inner[0].weight.requires_grad and inner[0].bias.requires_grad
    assert planned.explain("module.0.weight") == planned.explain("0.weight")


def test_peft_wrapped_model_uses_canonical_names() -> None:
    """Through a PEFT LoRA wrapper, recipes see canonical names (no ``base_model.model.`` or ``base_layer``)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model("bert"), LoraConfig(r=2, target_modules=["query", "value"]))
    before = flags(peft_model)
    recipe = {
        "default": "keep",
        "rules": [
            {"select": "@embeddings", "trainable": False},
            {"match": r"bert\.encoder\.layer\.2\.attention\.self\.query", "params": "bias", "trainable": True},
        ],
    }
    planned = apply_recipe(peft_model, recipe)
    assert not any("base_model" in name or "base_layer" in name for name in planned.trainable + planned.frozen)
    lora = {name for name in planned.trainable if ".lora_" in name}
    assert lora == {
        f"bert.encoder.layer.{layer}.attention.self.{proj}.lora_{ab}.default.weight"
        for layer in range(3)
        for proj in ("query", "value")
        for ab in "AB"
    }
    assert set(planned.trainable) == lora | {"bert.encoder.layer.2.attention.self.query.bias"}
    wrapped = "base_model.model.bert.encoder.layer.2.attention.self.query.base_layer.bias"
    assert not before[wrapped] and flags(peft_model)[wrapped]
    assert "rule 2" in planned.explain(wrapped)
    assert planned.decision(wrapped).name == "bert.encoder.layer.2.attention.self.query.bias"


def test_torch_compile_wrapper_uses_canonical_names() -> None:
    """Under ``torch.compile`` (not run, so nothing compiles) selectors resolve and names lose ``_orig_mod.``."""
    model = tiny_model("bert")
    planned = apply_recipe(torch.compile(model), "freeze_encoder")
    assert planned.trainable == [
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    ]
    assert {name for name, param in model.named_parameters() if param.requires_grad} == set(planned.trainable)
    assert planned.explain("_orig_mod.bert.encoder.layer.1.output.dense.bias").startswith(
        "bert.encoder.layer.1.output.dense.bias: frozen by freeze_encoder, rule 2"
    )
