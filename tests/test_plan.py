"""plan(): rule semantics (order, default, kinds, params, full-match), reports, and purity."""

from __future__ import annotations

import fnmatch
import functools
import json

import pytest
import torch
from tiny import tiny_model
from torch import nn

from hf_freeze import RecipeError, applied_recipe, plan
from hf_freeze.recipe import bundled_recipe_names


@functools.cache
def meta_model(arch: str) -> nn.Module:
    """A tiny model on the meta device."""
    with torch.device("meta"):
        return tiny_model(arch)


def names(arch: str, patterns: str) -> set[str]:
    """Parameter names of the tiny ``arch`` matching any of the ``|``-separated shell-style ``patterns``."""
    found: set[str] = set()
    for pattern in patterns.split("|"):
        hits = fnmatch.filter([name for name, _ in meta_model(arch).named_parameters()], pattern)
        assert hits, pattern
        found.update(hits)
    return found


def frozen_by(arch: str, rule: dict) -> set[str]:
    """What a single freezing rule freezes on ``arch`` (default trainable)."""
    return set(plan(meta_model(arch), {"rules": [{**rule, "trainable": False}]}).frozen)


def test_plan_is_pure() -> None:
    """Planning every bundled recipe changes no flag, no grad, and marks nothing as applied."""
    model = tiny_model("bert")
    for index, param in enumerate(model.parameters()):
        param.requires_grad_(index % 2 == 0)
    before = {name: param.requires_grad for name, param in model.named_parameters()}
    for recipe in bundled_recipe_names():
        plan(model, recipe)
    assert {name: param.requires_grad for name, param in model.named_parameters()} == before
    assert all(param.grad is None for param in model.parameters()) and applied_recipe(model) is None


def test_later_rule_overrides_earlier() -> None:
    """Rules apply in order; the last rule that selects a tensor decides it."""
    recipe = {
        "rules": [
            {"select": "@encoder", "trainable": False},
            {"select": "@blocks[-1:]", "params": "bias", "trainable": True},
        ]
    }
    planned = plan(meta_model("bert"), recipe)
    assert set(planned.frozen) == names("bert", "bert.encoder.*") - names("bert", "bert.encoder.layer.2.*.bias")
    assert planned.decision("bert.encoder.layer.2.output.dense.bias").rule == "<dict>, rule 2"


@pytest.mark.parametrize("default", ["trainable", "frozen", "keep"])
def test_default_decides_what_no_rule_selects(default: str) -> None:
    """``default`` covers the undecided tensors; ``keep`` reads their current flag."""
    model = tiny_model("bert")
    model.bert.pooler.dense.weight.requires_grad_(False)
    planned = plan(model, {"default": default, "rules": [{"select": "@head", "trainable": True}]})
    undecided = names("bert", "bert.*")
    want = {"trainable": undecided, "frozen": set(), "keep": undecided - {"bert.pooler.dense.weight"}}[default]
    assert set(planned.trainable) == want | names("bert", "classifier.*")
    assert planned.default_report()["parameters"] == len(undecided)


@pytest.mark.parametrize(
    ("arch", "rule", "pattern"),
    [
        ("bert", {"kinds": "norm"}, "*LayerNorm.*"),
        ("llama", {"kinds": "norm"}, "*norm.weight"),
        ("bert", {"kinds": "embedding"}, "bert.embeddings.*_embeddings.weight"),
        ("vit", {"kinds": "conv"}, "vit.embeddings.patch_embeddings.projection.*"),
        ("gpt2", {"kinds": "dense", "params": "kernel", "select": "@blocks[0]"}, "transformer.h.0.*.c_*.weight"),
        ("bert", {"params": "bias"}, "*.bias"),
        ("qwen3_moe", {"params": ["gate_up_proj"]}, "*.experts.gate_up_proj"),
        ("bert", {"match": [r"bert\.pooler", "classifier"]}, "bert.pooler.*|classifier.*"),
        ("bert", {"match": r"bert\.encoder\.layer\.\d+\.attention"}, "bert.encoder.layer.*.attention.*"),
    ],
)
def test_rule_selection(arch: str, rule: dict, pattern: str) -> None:
    """kinds (by type), params (kernel, bias, exact names) and match (full-match, whole subtree)."""
    assert frozen_by(arch, rule) == names(arch, pattern)


def test_match_is_a_full_match() -> None:
    """``encoder`` does not match ``bert.encoder``: a full match is needed, so the rule selects nothing."""
    with pytest.raises(RecipeError, match="rule 1: selects no parameter of BertForSequenceClassification"):
        plan(meta_model("bert"), {"rules": [{"match": "encoder", "trainable": False}]})


def test_optional_rules_may_select_nothing() -> None:
    """``optional: true`` allows zero tensors, and a selector that does not apply (no head on BertModel)."""
    with torch.device("meta"):
        bare = tiny_model("bert", "BertModel")
    planned = plan(bare, "freeze_dense_kernels")
    assert [(report.parameters, report.elements) for report in planned.rules[1:]] == [(0, 0), (0, 0)]


def test_rule_reports_count_modules_tensors_elements() -> None:
    """Per rule: distinct modules, tensors and elements it selected."""
    planned = plan(meta_model("bert"), {"rules": [{"select": "@blocks[0]", "kinds": "dense", "trainable": False}]})
    (report,) = planned.rules
    hidden, intermediate = 32, 37
    assert (report.modules, report.parameters) == (6, 12)
    assert report.elements == 4 * (hidden * hidden + hidden) + 2 * hidden * intermediate + intermediate + hidden
    assert report.description == "select @blocks[0]; kinds dense -> frozen" and report.trainable is False


def test_totals_blocks_and_optimizer_state() -> None:
    """Totals add up, blocks partition the elements, AdamW keeps two fp32 copies (SGD one)."""
    model = meta_model("bert")
    planned = plan(model, "train_top_blocks")
    totals = planned.totals()
    elements = sum(param.numel() for param in model.parameters())
    trainable = sum(param.numel() for name, param in model.named_parameters() if name in planned.trainable)
    assert (totals["elements"], totals["trainable_elements"]) == (elements, trainable)
    assert totals["trainable_percent"] == round(100 * trainable / elements, 4)
    assert planned.optimizer_state_bytes("adamw") == 8 * trainable
    assert planned.optimizer_state_bytes("SGD") == 4 * trainable
    with pytest.raises(ValueError, match="lion"):
        planned.optimizer_state_bytes("lion")
    blocks = {block["name"]: block for block in planned.blocks()}
    assert list(blocks) == [
        "bert.embeddings",
        "bert.encoder.layer.0",
        "bert.encoder.layer.1",
        "bert.encoder.layer.2",
        "bert.pooler",
        "classifier",
    ]
    assert blocks["bert.encoder.layer.0"]["trainable_elements"] == 0
    assert blocks["bert.encoder.layer.2"]["frozen_elements"] == 0
    assert sum(b["trainable_elements"] + b["frozen_elements"] for b in blocks.values()) == elements


def test_optimizer_state_follows_dtype() -> None:
    """A bf16 model's trainable tensors take half the bytes (the estimate uses each tensor's element size)."""
    with torch.device("meta"):
        model = tiny_model("llama").to(torch.bfloat16)
    planned = plan(model, "train_head_only")
    assert planned.optimizer_state_bytes() == 2 * 2 * model.lm_head.weight.numel()


def test_to_dict_is_json_with_stable_keys() -> None:
    """to_dict() survives json and has the documented keys."""
    data = json.loads(json.dumps(plan(meta_model("t5"), "freeze_encoder").to_dict()))
    assert list(data) == [
        "model_class",
        "recipe",
        "phase",
        "default",
        "rules",
        "blocks",
        "totals",
        "optimizer_state_bytes",
        "warnings",
        "parameters",
    ]
    assert data["parameters"]["shared.weight"]["aliases"][-1] == "lm_head.weight"
    assert len(data["warnings"]) == 1


def test_explain_accepts_wrapped_names_and_rejects_unknown() -> None:
    """explain() takes canonical, wrapped (``module.``, ``_orig_mod.``) and tied names; unknown is KeyError."""
    planned = plan(meta_model("bert"), "freeze_encoder")
    canonical = "bert.encoder.layer.0.attention.self.query.weight"
    sentence = f"{canonical}: frozen by freeze_encoder, rule 2 (select @encoder -> frozen)."
    assert planned.explain(canonical) == sentence
    assert planned.explain(f"module._orig_mod.{canonical}") == sentence
    assert planned.explain("classifier.bias") == (
        "classifier.bias: trainable by default (trainable; no rule of 'freeze_encoder' selects it)."
    )
    with pytest.raises(KeyError, match="not a parameter of BertForSequenceClassification"):
        planned.explain("bert.decoder.weight")


class Quantized(nn.Module):
    """A module with an integer parameter (as quantized layers have) next to a float one."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.codes = nn.Parameter(torch.zeros(3, dtype=torch.int8), requires_grad=False)


def test_integer_tensors_never_train() -> None:
    """Under ``default: trainable`` an integer tensor stays frozen (warned); a rule training it is an error."""
    planned = plan(Quantized(), {"rules": [{"match": "", "params": "scale", "trainable": True}]})
    assert planned.trainable == ["scale"] and planned.frozen == ["codes"]
    assert any("codes has dtype torch.int8" in warning for warning in planned.warnings)
    with pytest.raises(RecipeError, match=r"rule 1: codes has dtype torch\.int8 and cannot train"):
        plan(Quantized(), {"rules": [{"match": "", "trainable": True}]})


def test_nothing_trains_is_warned() -> None:
    """A plan in which nothing trains says so."""
    planned = plan(meta_model("llama"), {"rules": [{"match": ".*", "trainable": False}]})
    assert planned.trainable == [] and planned.warnings == [
        "Nothing trains: every tensor of LlamaForCausalLM is frozen."
    ]


def test_phases_accumulate_rules() -> None:
    """Phase N applies the top-level rules and those of phases 0..N; a phase past the end is an error."""
    model = meta_model("llama")
    counts = [len(plan(model, "gradual_unfreeze", phase=phase).trainable) for phase in range(3)]
    assert counts == [1, 1 + 2 * 9, len(list(model.parameters()))]
    with pytest.raises(RecipeError, match="no phase 3"):
        plan(model, "gradual_unfreeze", phase=3)
    with pytest.raises(RecipeError, match="no phase 1"):
        plan(model, "freeze_embeddings", phase=1)
