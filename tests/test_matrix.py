"""Architecture matrix: every bundled recipe on every tiny architecture, with the exact trainable set.

The expectations are written by hand from the recipe semantics (DESIGN.md section 4 and ``recipes/*.yaml``),
as shell-style patterns over the model's parameter names: ``trainable`` lists what trains (everything else is
frozen) and ``frozen`` lists what is frozen (everything else trains). Every pattern must match at least one
name, so a typo in an expectation cannot pass silently. Tied tensors appear under their first name
(``transformer.wte.weight`` for GPT-2, ``shared.weight`` for T5), as ``named_parameters()`` lists them.
"""

from __future__ import annotations

import fnmatch
import functools

import pytest
import torch
from tiny import ARCHITECTURES, DEFAULT_CLASSES, tiny_model

from hf_freeze import RecipeError, apply_recipe, plan

ALL = ["*"]

# (arch, recipe or "recipe@phase") -> {"trainable": patterns} | {"frozen": patterns} | {"error": model class}
EXPECTED: dict[tuple[str, str], dict[str, list[str] | str]] = {
    # BERT: embeddings, encoder.layer[0..2], pooler (in the body), classifier (the head).
    ("bert", "freeze_encoder"): {"trainable": ["bert.pooler.*", "classifier.*"]},
    ("bert", "freeze_embeddings"): {"frozen": ["bert.embeddings.*"]},
    ("bert", "train_head_only"): {"trainable": ["classifier.*"]},
    ("bert", "freeze_dense_kernels"): {
        "frozen": [
            "bert.encoder.layer.*.attention.self.*.weight",
            "bert.encoder.layer.*.dense.weight",
            "bert.pooler.dense.weight",
        ]
    },
    ("bert", "train_top_blocks"): {"trainable": ["bert.encoder.layer.[12].*", "classifier.*"]},
    ("bert", "gradual_unfreeze@0"): {"trainable": ["classifier.*"]},
    ("bert", "gradual_unfreeze@1"): {"trainable": ["bert.encoder.layer.[12].*", "classifier.*"]},
    ("bert", "gradual_unfreeze@2"): {"trainable": ALL},
    # DistilBERT: the encoder is `transformer`; the head is pre_classifier + classifier; no pooler.
    ("distilbert", "freeze_encoder"): {"trainable": ["pre_classifier.*", "classifier.*"]},
    ("distilbert", "freeze_embeddings"): {"frozen": ["distilbert.embeddings.*"]},
    ("distilbert", "train_head_only"): {"trainable": ["pre_classifier.*", "classifier.*"]},
    ("distilbert", "freeze_dense_kernels"): {
        "frozen": ["distilbert.transformer.layer.*_lin.weight", "distilbert.transformer.layer.*.ffn.lin[12].weight"]
    },
    ("distilbert", "train_top_blocks"): {
        "trainable": ["distilbert.transformer.layer.[12].*", "pre_classifier.*", "classifier.*"]
    },
    ("distilbert", "gradual_unfreeze@0"): {"trainable": ["pre_classifier.*", "classifier.*"]},
    ("distilbert", "gradual_unfreeze@1"): {
        "trainable": ["distilbert.transformer.layer.[12].*", "pre_classifier.*", "classifier.*"]
    },
    ("distilbert", "gradual_unfreeze@2"): {"trainable": ALL},
    # RoBERTa: no pooler in the classification model; the head is classifier.dense + classifier.out_proj.
    ("roberta", "freeze_encoder"): {"trainable": ["classifier.*"]},
    ("roberta", "freeze_embeddings"): {"frozen": ["roberta.embeddings.*"]},
    ("roberta", "train_head_only"): {"trainable": ["classifier.dense.*", "classifier.out_proj.*"]},
    ("roberta", "freeze_dense_kernels"): {
        "frozen": ["roberta.encoder.layer.*.attention.self.*.weight", "roberta.encoder.layer.*.dense.weight"]
    },
    ("roberta", "train_top_blocks"): {"trainable": ["roberta.encoder.layer.[12].*", "classifier.*"]},
    ("roberta", "gradual_unfreeze@0"): {"trainable": ["classifier.*"]},
    ("roberta", "gradual_unfreeze@1"): {"trainable": ["roberta.encoder.layer.[12].*", "classifier.*"]},
    ("roberta", "gradual_unfreeze@2"): {"trainable": ALL},
    # GPT-2: decoder-only, Conv1D dense layers, lm_head tied to wte (one tensor named transformer.wte.weight).
    ("gpt2", "freeze_encoder"): {"error": "GPT2LMHeadModel"},
    ("gpt2", "freeze_embeddings"): {"frozen": ["transformer.wte.weight", "transformer.wpe.weight"]},
    ("gpt2", "train_head_only"): {"trainable": ["transformer.wte.weight"]},  # the head rule reaches wte via lm_head
    ("gpt2", "freeze_dense_kernels"): {"frozen": ["transformer.h.*.c_*.weight"]},
    ("gpt2", "train_top_blocks"): {"trainable": ["transformer.h.[12].*", "transformer.wte.weight"]},
    ("gpt2", "gradual_unfreeze@0"): {"trainable": ["transformer.wte.weight"]},
    ("gpt2", "gradual_unfreeze@1"): {"trainable": ["transformer.h.[12].*", "transformer.wte.weight"]},
    ("gpt2", "gradual_unfreeze@2"): {"trainable": ALL},
    # Llama: decoder-only, untied lm_head, no biases.
    ("llama", "freeze_encoder"): {"error": "LlamaForCausalLM"},
    ("llama", "freeze_embeddings"): {"frozen": ["model.embed_tokens.weight"]},
    ("llama", "train_head_only"): {"trainable": ["lm_head.weight"]},
    ("llama", "freeze_dense_kernels"): {"frozen": ["model.layers.*_proj.weight"]},
    ("llama", "train_top_blocks"): {"trainable": ["model.layers.[12].*", "lm_head.weight"]},
    ("llama", "gradual_unfreeze@0"): {"trainable": ["lm_head.weight"]},
    ("llama", "gradual_unfreeze@1"): {"trainable": ["model.layers.[12].*", "lm_head.weight"]},
    ("llama", "gradual_unfreeze@2"): {"trainable": ALL},
    # T5: encoder-decoder; shared == encoder.embed_tokens == decoder.embed_tokens == lm_head (one tensor).
    ("t5", "freeze_encoder"): {"trainable": ["decoder.block.*", "decoder.final_layer_norm.weight"]},
    ("t5", "freeze_embeddings"): {"frozen": ["shared.weight"]},
    ("t5", "train_head_only"): {"trainable": ["shared.weight"]},
    ("t5", "freeze_dense_kernels"): {
        "frozen": ["*coder.block.*.[qkvo].weight", "*coder.block.*.DenseReluDense.w[io].weight"]
    },
    ("t5", "train_top_blocks"): {"error": "T5ForConditionalGeneration"},  # @blocks is ambiguous here
    ("t5", "gradual_unfreeze@0"): {"trainable": ["shared.weight"]},
    ("t5", "gradual_unfreeze@1"): {"error": "T5ForConditionalGeneration"},
    ("t5", "gradual_unfreeze@2"): {"error": "T5ForConditionalGeneration"},
    # ViT: the embeddings hold cls_token, position embeddings and the (conv) patch projection; the encoder's
    # final layernorm belongs to the encoder (as in the original ViT); the head is the classifier.
    ("vit", "freeze_encoder"): {"trainable": ["classifier.*"]},
    ("vit", "freeze_embeddings"): {"frozen": ["vit.embeddings.*"]},
    ("vit", "train_head_only"): {"trainable": ["classifier.*"]},
    ("vit", "freeze_dense_kernels"): {
        "frozen": ["vit.layers.*.attention.[qkvo]_proj.weight", "vit.layers.*.mlp.fc[12].weight"]
    },
    ("vit", "train_top_blocks"): {"trainable": ["vit.layers.[12].*", "classifier.*"]},
    ("vit", "gradual_unfreeze@0"): {"trainable": ["classifier.*"]},
    ("vit", "gradual_unfreeze@1"): {"trainable": ["vit.layers.[12].*", "classifier.*"]},
    ("vit", "gradual_unfreeze@2"): {"trainable": ALL},
    # Qwen3-MoE: decoder-only, fused 3-D expert kernels, untied lm_head. The router (`mlp.gate`, a custom
    # module rather than a Linear) is not of kind dense, so it trains under freeze_dense_kernels.
    ("qwen3_moe", "freeze_encoder"): {"error": "Qwen3MoeForCausalLM"},
    ("qwen3_moe", "freeze_embeddings"): {"frozen": ["model.embed_tokens.weight"]},
    ("qwen3_moe", "train_head_only"): {"trainable": ["lm_head.weight"]},
    ("qwen3_moe", "freeze_dense_kernels"): {
        "frozen": [
            "model.layers.*.self_attn.[qkvo]_proj.weight",
            "model.layers.*.mlp.experts.gate_up_proj",
            "model.layers.*.mlp.experts.down_proj",
        ]
    },
    ("qwen3_moe", "train_top_blocks"): {"trainable": ["model.layers.[12].*", "lm_head.weight"]},
    ("qwen3_moe", "gradual_unfreeze@0"): {"trainable": ["lm_head.weight"]},
    ("qwen3_moe", "gradual_unfreeze@1"): {"trainable": ["model.layers.[12].*", "lm_head.weight"]},
    ("qwen3_moe", "gradual_unfreeze@2"): {"trainable": ALL},
}

RECIPE_CASES = sorted({case for _, case in EXPECTED})


@functools.cache
def meta_model(arch: str) -> torch.nn.Module:
    """The tiny model of ``arch`` on the meta device (shapes only; plans never need weights)."""
    with torch.device("meta"):
        return tiny_model(arch)


def expand(names: list[str], patterns: list[str]) -> set[str]:
    """The names matched by any of ``patterns``; every pattern must match at least one name."""
    chosen: set[str] = set()
    for pattern in patterns:
        hits = fnmatch.filter(names, pattern)
        assert hits, f"expectation pattern {pattern!r} matches no parameter"
        chosen.update(hits)
    return chosen


def expected_trainable(names: list[str], expectation: dict) -> set[str]:
    """The trainable set an expectation describes."""
    if "trainable" in expectation:
        return expand(names, expectation["trainable"])
    return set(names) - expand(names, expectation["frozen"])


def split_case(case: str) -> tuple[str, int]:
    """``"gradual_unfreeze@1"`` -> ``("gradual_unfreeze", 1)``."""
    recipe, _, phase = case.partition("@")
    return recipe, int(phase or 0)


def test_matrix_is_complete() -> None:
    """Every architecture is paired with every bundled recipe (and every phase of gradual_unfreeze)."""
    from hf_freeze.recipe import bundled_recipe_names

    recipes = {split_case(case)[0] for case in RECIPE_CASES}
    assert recipes == set(bundled_recipe_names())
    assert set(EXPECTED) == {(arch, case) for arch in ARCHITECTURES for case in RECIPE_CASES}


@pytest.mark.parametrize("case", RECIPE_CASES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_exact_trainable_set(arch: str, case: str) -> None:
    """The plan's trainable set is exactly the hand-written one; inapplicable recipes name the model class."""
    model = meta_model(arch)
    recipe, phase = split_case(case)
    expectation = EXPECTED[(arch, case)]
    if "error" in expectation:
        with pytest.raises(RecipeError, match=expectation["error"]) as caught:
            plan(model, recipe, phase=phase)
        assert f"{recipe}, " in str(caught.value) and "rule" in str(caught.value)
        return
    names = [name for name, _ in model.named_parameters()]
    planned = plan(model, recipe, phase=phase)
    want = expected_trainable(names, expectation)
    assert set(planned.trainable) == want, {
        "unexpectedly trainable": sorted(set(planned.trainable) - want),
        "unexpectedly frozen": sorted(want - set(planned.trainable)),
    }
    assert sorted(planned.trainable + planned.frozen) == sorted(names)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_apply_on_real_weights_matches_matrix(arch: str) -> None:
    """On a real (CPU) tiny model, apply_recipe sets requires_grad to exactly the matrix's trainable set."""
    model = tiny_model(arch)
    names = [name for name, _ in model.named_parameters()]
    apply_recipe(model, "freeze_dense_kernels")
    flags = {name for name, param in model.named_parameters() if param.requires_grad}
    assert flags == expected_trainable(names, EXPECTED[(arch, "freeze_dense_kernels")])
    assert type(model).__name__ == DEFAULT_CLASSES[arch]


# Tied weights: one tensor under several names; explain() names the alias, summary() warns.


def test_gpt2_freezing_wte_freezes_tied_lm_head() -> None:
    """Freezing the input embeddings freezes lm_head, and the plan says it happened through wte."""
    planned = plan(meta_model("gpt2"), "freeze_embeddings")
    explained = planned.explain("lm_head.weight")
    assert explained.startswith("lm_head.weight: frozen by freeze_embeddings, rule 1")
    assert "through its tied alias transformer.wte.weight" in explained
    assert "tied alias" not in planned.explain("transformer.wte.weight")
    warnings = [line for line in planned.summary().splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "lm_head.weight frozen" in warnings[0] and "transformer.wte.weight" in warnings[0]


def test_gpt2_head_rule_trains_tied_wte() -> None:
    """The head rule comes after the body rule, so the tied wte/lm_head tensor trains, reached via lm_head."""
    planned = plan(meta_model("gpt2"), "train_head_only")
    explained = planned.explain("transformer.wte.weight")
    assert explained.startswith("transformer.wte.weight: trainable by train_head_only, rule 2")
    assert "through its tied alias lm_head.weight" in explained
    assert any("transformer.wte.weight trainable" in w and "lm_head.weight" in w for w in planned.warnings)
    assert "Warning:" in planned.summary()


def test_gpt2_any_rule_beats_default_for_tied_twin() -> None:
    """Under ``default: frozen`` a rule selecting only lm_head decides wte too (any rule beats default)."""
    recipe = {"default": "frozen", "rules": [{"match": "lm_head", "trainable": True}]}
    planned = plan(meta_model("gpt2"), recipe)
    assert planned.trainable == ["transformer.wte.weight"]
    assert planned.decision("transformer.wte.weight").rule == "<dict>, rule 1"


def test_t5_encoder_rule_reaches_shared_through_encoder_embed_tokens() -> None:
    """freeze_encoder on T5: the last rule reaching the shared tensor is @encoder, via encoder.embed_tokens."""
    planned = plan(meta_model("t5"), "freeze_encoder")
    for alias in ("lm_head.weight", "decoder.embed_tokens.weight", "shared.weight"):
        explained = planned.explain(alias)
        assert explained.startswith(f"{alias}: frozen by freeze_encoder, rule 2"), explained
        assert "through its tied alias encoder.embed_tokens.weight" in explained
    assert "tied alias" not in planned.explain("encoder.embed_tokens.weight")
    (warning,) = planned.warnings
    for alias in ("shared.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
        assert alias in warning
    assert f"Warning: {warning}" in planned.summary()
    assert planned.decision("lm_head.weight").aliases == (
        "shared.weight",
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
        "lm_head.weight",
    )


def test_t5_embeddings_rule_reaches_all_aliases() -> None:
    """freeze_embeddings on T5 selects ``shared``; the three twins are frozen through it, with a warning."""
    planned = plan(meta_model("t5"), "freeze_embeddings")
    assert "through its tied alias shared.weight" in planned.explain("encoder.embed_tokens.weight")
    assert "through its tied alias shared.weight" in planned.explain("lm_head.weight")
    assert len(planned.warnings) == 1 and "lm_head.weight" in planned.warnings[0]


def test_untied_llama_has_no_alias_warning() -> None:
    """Llama's lm_head is its own tensor: freezing the embeddings leaves it to the default, no warning."""
    planned = plan(meta_model("llama"), "freeze_embeddings")
    assert planned.warnings == []
    assert "by default" in planned.explain("lm_head.weight")
    assert "Warning" not in planned.summary()
