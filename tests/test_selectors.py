"""Selectors: parsing, and what each one resolves to on the tiny architectures (meta device)."""

from __future__ import annotations

import functools

import pytest
import torch
from tiny import tiny_model
from torch import nn

from hf_freeze import RecipeError
from hf_freeze.selectors import Anatomy, find_stack, parse_selector


@functools.cache
def meta_model(arch: str, model_class: str | None = None) -> nn.Module:
    """A tiny model on the meta device."""
    with torch.device("meta"):
        return tiny_model(arch, model_class)


def resolve(model: nn.Module, text: str) -> list[str]:
    """The names of the root modules ``text`` resolves to on ``model``."""
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(module)] for module in Anatomy(model).resolve(parse_selector(text))]


@pytest.mark.parametrize(
    ("text", "target", "stack", "index"),
    [
        ("@embeddings", "embeddings", None, None),
        ("@head", "head", None, None),
        (" @body ", "body", None, None),
        ("@blocks", "blocks", None, None),
        ("@blocks[3]", "blocks", None, 3),
        ("@blocks[-2:]", "blocks", None, slice(-2, None, None)),
        ("@blocks[ 1 : -1 ]", "blocks", None, slice(1, -1, None)),
        ("@blocks[::2]", "blocks", None, slice(None, None, 2)),
        ("@encoder.blocks[0:2]", "blocks", "encoder", slice(0, 2, None)),
        ("@decoder.blocks[-1]", "blocks", "decoder", -1),
    ],
)
def test_parse_valid(text: str, target: str, stack: str | None, index: object) -> None:
    """Valid selectors parse to their target, stack prefix and Python index or slice."""
    selector = parse_selector(text)
    assert (selector.target, selector.stack, selector.index) == (target, stack, index)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("@Head", "unknown selector"),
        ("head", "unknown selector"),
        ("@layers", "unknown selector"),
        ("@decoder.head", "only blocks take"),
        ("@body[0]", "takes no index"),
        ("@blocks[]", "bad index"),
        ("@blocks[1:2:3:4]", "bad index"),
        ("@blocks[x]", "bad index"),
        ("@blocks[0", "unknown selector"),
        ("@blocks[::0]", "step of 0"),
    ],
)
def test_parse_invalid(text: str, message: str) -> None:
    """Malformed selectors are a RecipeError with a hint."""
    with pytest.raises(RecipeError, match=message):
        parse_selector(text)


@pytest.mark.parametrize(
    ("arch", "text", "expected"),
    [
        ("bert", "@embeddings", ["bert.embeddings"]),
        ("gpt2", "@embeddings", ["transformer.wte", "transformer.wpe"]),
        ("llama", "@embeddings", ["model.embed_tokens"]),
        ("t5", "@embeddings", ["shared"]),
        ("vit", "@embeddings", ["vit.embeddings"]),
        ("bert", "@encoder", ["bert.encoder"]),
        ("distilbert", "@encoder", ["distilbert.transformer"]),
        ("vit", "@encoder", ["vit.layers", "vit.layernorm"]),
        ("t5", "@encoder", ["encoder"]),
        ("t5", "@decoder", ["decoder"]),
        ("gpt2", "@decoder", ["transformer.h", "transformer.ln_f"]),
        ("llama", "@decoder", ["model.layers", "model.norm"]),
        ("qwen3_moe", "@decoder", ["model.layers", "model.norm"]),
        ("bert", "@body", ["bert"]),
        ("t5", "@body", ["shared", "encoder", "decoder"]),
        ("bert", "@head", ["classifier"]),
        ("distilbert", "@head", ["pre_classifier", "classifier"]),
        ("roberta", "@head", ["classifier"]),
        ("gpt2", "@head", ["lm_head"]),
        ("t5", "@head", ["lm_head"]),
        ("bert", "@blocks[-2:]", ["bert.encoder.layer.1", "bert.encoder.layer.2"]),
        ("bert", "@encoder.blocks[0]", ["bert.encoder.layer.0"]),
        ("gpt2", "@blocks[::2]", ["transformer.h.0", "transformer.h.2"]),
        ("qwen3_moe", "@blocks[-1]", ["model.layers.2"]),
        ("vit", "@blocks", ["vit.layers.0", "vit.layers.1", "vit.layers.2"]),
        ("t5", "@encoder.blocks[-1:]", ["encoder.block.1"]),
        ("t5", "@decoder.blocks[0]", ["decoder.block.0"]),
    ],
)
def test_resolution(arch: str, text: str, expected: list[str]) -> None:
    """Each selector resolves to the modules the recipe semantics name, by introspection."""
    assert resolve(meta_model(arch), text) == expected


@pytest.mark.parametrize(
    ("arch", "model_class", "text", "message"),
    [
        ("bert", None, "@decoder", "does not apply to BertForSequenceClassification: it is encoder-only"),
        ("gpt2", None, "@encoder", "does not apply to GPT2LMHeadModel: it is decoder-only"),
        ("llama", None, "@encoder.blocks[0]", "does not apply to LlamaForCausalLM"),
        ("bert", None, "@decoder.blocks[0]", "does not apply to BertForSequenceClassification"),
        ("bert", "BertModel", "@head", "does not apply to BertModel: it is a bare base model"),
        ("bert", None, "@blocks[3]", "it has 3 blocks"),
        ("bert", None, "@blocks[-4]", "it has 3 blocks"),
        ("bert", None, "@blocks[3:]", "selects none of its 3 blocks"),
        ("t5", None, "@blocks[0]", "T5ForConditionalGeneration: it is encoder-decoder"),
    ],
)
def test_selector_that_does_not_apply(arch: str, model_class: str | None, text: str, message: str) -> None:
    """A selector that does not fit the model names the model class and why."""
    with pytest.raises(RecipeError, match=message):
        resolve(meta_model(arch, model_class), text)


class Tower(nn.Module):
    """A plain torch model: a small ModuleList of wide layers and a long one of narrow layers."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.ModuleList(nn.Linear(64, 64) for _ in range(2))
        self.narrow = nn.ModuleList(nn.Linear(4, 4) for _ in range(6))
        self.mixed = nn.ModuleList([nn.Linear(200, 200), nn.ReLU()])  # not a stack: classes differ
        self.head = nn.Linear(64, 2)


def test_find_stack_prefers_most_parameters_and_skips_mixed_lists() -> None:
    """Without hints the stack is the same-class ModuleList holding the most parameters."""
    name, stack = find_stack(Tower())
    assert name == "wide" and len(stack) == 2


def test_find_stack_prefers_no_split_classes() -> None:
    """A class named in ``_no_split_modules`` wins over a bigger list (it is the transformer block)."""
    tower = Tower()
    tower.blocks = nn.ModuleList(nn.LayerNorm(4) for _ in range(3))
    assert find_stack(tower, frozenset({"LayerNorm"}))[0] == "blocks"
    assert find_stack(nn.Linear(2, 2)) is None


def test_plain_torch_model_takes_blocks_but_not_model_selectors() -> None:
    """On a non-transformers model @blocks works (generic stack); @head and friends ask for regexes."""
    assert resolve(Tower(), "@blocks[-1]") == ["wide.1"]
    with pytest.raises(RecipeError, match="Tower: it is not a transformers model; use 'match'"):
        resolve(Tower(), "@head")
