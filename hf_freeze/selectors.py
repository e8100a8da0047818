"""Architecture-aware selectors (``@embeddings``, ``@encoder``, ``@blocks[-2:]``, ``@head`` ...).

Selectors are resolved by introspecting the model, not by a table per model class:

- ``@body`` is ``model.base_model`` (``base_model_prefix``); ``@head`` is what the task model adds around
  it, or the output embeddings when the task model has no separate body (T5).
- the main stack of blocks is the ``ModuleList`` of identical modules that holds the most parameters,
  preferring classes listed in ``_no_split_modules``;
- ``@encoder``/``@decoder`` are the encoder and decoder of an encoder-decoder model; for a model with one
  stack, the stack's container (or the stack plus the body's final norms) is the encoder when its
  attention is bidirectional and the decoder when it is causal;
- ``@embeddings`` is the container of ``get_input_embeddings()`` (``BertEmbeddings``), or the input
  embedding plus its sibling embeddings (GPT-2's ``wte`` and ``wpe``).

A selector that does not apply raises ``RecipeError`` naming the model class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from torch import nn

from hf_freeze.errors import RecipeError
from hf_freeze.kinds import is_embedding, is_norm
from hf_freeze.names import unwrap_model

TARGETS = ("embeddings", "encoder", "decoder", "body", "head", "blocks")
_SELECTOR = re.compile(r"@(?:(?P<stack>encoder|decoder)\.)?(?P<target>[a-z]+)(?:\[(?P<index>[^\]]*)\])?")
_INDEX = re.compile(r"\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*)?)?")


@dataclass(frozen=True)
class Selector:
    """A parsed selector: ``target`` with an optional ``stack`` prefix and block ``index``."""

    text: str
    target: str
    stack: str | None = None
    index: slice | int | None = None


def parse_selector(text: str) -> Selector:
    """Parse ``@target``, ``@blocks[i:j]`` or ``@encoder.blocks[i:j]``; raise ``RecipeError`` otherwise."""
    found = _SELECTOR.fullmatch(text.strip()) if isinstance(text, str) else None
    usage = "selectors are @embeddings, @encoder, @decoder, @body, @head, @blocks[i:j], @encoder.blocks[i:j]"
    if found is None or found["target"] not in TARGETS:
        raise RecipeError(f"unknown selector {text!r}; {usage}.")
    target, stack, raw_index = found["target"], found["stack"], found["index"]
    if stack is not None and target != "blocks":
        raise RecipeError(f"unknown selector {text!r}; only blocks take an @encoder./@decoder. prefix.")
    if raw_index is not None and target != "blocks":
        raise RecipeError(f"selector {text!r} takes no index; only @blocks[...] does.")
    return Selector(text=text, target=target, stack=stack, index=_parse_index(raw_index, text))


def _parse_index(raw: str | None, text: str) -> slice | int | None:
    if raw is None:
        return None
    found = _INDEX.fullmatch(raw)
    if found is None or not raw.strip():
        raise RecipeError(f"selector {text!r} has a bad index; write a Python index or slice such as [-2:].")
    start, stop, step = (int(part) if part is not None else None for part in found.groups())
    if ":" not in raw:
        return start
    if step == 0:
        raise RecipeError(f"selector {text!r} has a slice step of 0.")
    return slice(start, stop, step)


class Anatomy:
    """What a model is made of, found once and used to resolve every selector of a plan."""

    def __init__(self, model: nn.Module):
        self.model = unwrap_model(model)
        self.model_class = type(self.model).__name__
        self.config = getattr(self.model, "config", None)
        base = getattr(self.model, "base_model", None)
        self.is_transformers = self.config is not None and isinstance(base, nn.Module)
        self.base: nn.Module = base if self.is_transformers else self.model
        self.is_encoder_decoder = bool(getattr(self.config, "is_encoder_decoder", False))

    def resolve(self, selector: Selector) -> list[nn.Module]:
        """The root modules ``selector`` stands for (each with its whole subtree)."""
        if selector.target != "blocks" and not self.is_transformers:
            self._fail(selector, "it is not a transformers model; use 'match' regexes instead")
        if selector.target == "body":
            return self.body
        if selector.target == "head":
            return self.head(selector)
        if selector.target == "embeddings":
            return self.embeddings(selector)
        if selector.target in ("encoder", "decoder"):
            return self.part(selector.target, selector)
        return self.blocks(selector)

    def _fail(self, selector: Selector, reason: str) -> None:
        raise RecipeError(f"{selector.text} does not apply to {self.model_class}: {reason}.")

    @cached_property
    def _head_modules(self) -> list[nn.Module]:
        if not self.is_transformers:
            return []
        if self.base is not self.model:
            return [
                child
                for child in self.model.children()
                if child is not self.base and any(True for _ in child.parameters())
            ]
        output = self.model.get_output_embeddings()
        return [output] if output is not None else []

    @property
    def body(self) -> list[nn.Module]:
        """Everything except the task head."""
        if self.base is not self.model:
            return [self.base]
        head = self._head_modules
        if not head:
            return [self.model]
        return [child for child in self.model.children() if all(child is not module for module in head)]

    def head(self, selector: Selector) -> list[nn.Module]:
        """The task head (or output embeddings)."""
        if not self._head_modules:
            self._fail(selector, "it is a bare base model with no task head")
        return list(self._head_modules)

    def embeddings(self, selector: Selector) -> list[nn.Module]:
        """The input embeddings with their container or sibling embeddings."""
        found = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        if found is None:
            self._fail(selector, "it has no input embeddings")
        parent = self._parent_of(found)
        if parent is not None and "embedding" in type(parent).__name__.lower():
            return [parent]
        siblings = [] if parent is None else [m for m in parent.children() if is_embedding(m) and m is not found]
        return [found, *siblings]

    def _parent_of(self, target: nn.Module) -> nn.Module | None:
        for module in self.model.modules():
            if any(child is target for child in module.children()):
                return module
        return None

    def _stack_owner(self, role: str) -> nn.Module | None:
        """The module holding the encoder or decoder stack of an encoder-decoder model."""
        owner = getattr(self.base, role, None)
        if isinstance(owner, nn.Module):
            return owner
        getter = getattr(self.base, f"get_{role}", None)
        return getter() if callable(getter) else None

    @cached_property
    def main_stack(self) -> tuple[str, nn.ModuleList] | None:
        """``(name relative to the body, ModuleList)`` of the main stack of repeated blocks."""
        return find_stack(self.base, self._no_split)

    @cached_property
    def _no_split(self) -> frozenset[str]:
        return frozenset(getattr(self.model, "_no_split_modules", None) or ())

    @cached_property
    def is_causal(self) -> bool:
        """Whether the single stack uses causal attention (a decoder-only model)."""
        if self.main_stack is None:
            return False
        first_block = self.main_stack[1][0]
        if any(getattr(module, "is_causal", False) is True for module in first_block.modules()):
            return True
        return bool(getattr(self.config, "is_decoder", False))

    def part(self, role: str, selector: Selector) -> list[nn.Module]:
        """``@encoder`` or ``@decoder``."""
        if self.is_encoder_decoder:
            owner = self._stack_owner(role)
            if owner is None:
                self._fail(selector, f"no {role} module was found")
            return [owner]
        if self.main_stack is None:
            self._fail(selector, "no stack of repeated blocks was found")
        if (role == "decoder") != self.is_causal:
            other = "decoder" if role == "encoder" else "encoder"
            self._fail(selector, f"it is {other}-only; use @{other}, @body or @blocks[...]")
        name, stack = self.main_stack
        container_name = name.rpartition(".")[0]
        if container_name:
            return [self.base.get_submodule(container_name)]
        final_norms = [child for child in self.base.children() if is_norm(child)]
        return [stack, *final_norms]

    def blocks(self, selector: Selector) -> list[nn.Module]:
        """``@blocks[...]``, ``@encoder.blocks[...]``, ``@decoder.blocks[...]``."""
        if self.is_encoder_decoder:
            if selector.stack is None:
                self._fail(selector, "it is encoder-decoder; use @encoder.blocks[...] or @decoder.blocks[...]")
            owner = self._stack_owner(selector.stack)
            found = find_stack(owner, self._no_split) if owner is not None else None
        else:
            if selector.stack is not None and (selector.stack == "decoder") != self.is_causal:
                kind = "decoder" if self.is_causal else "encoder"
                self._fail(selector, f"it is {kind}-only; use @blocks[...]")
            found = self.main_stack
        if found is None:
            self._fail(selector, "no stack of repeated blocks was found")
        blocks = list(found[1])
        if selector.index is None:
            return blocks
        if isinstance(selector.index, int):
            if not -len(blocks) <= selector.index < len(blocks):
                self._fail(selector, f"it has {len(blocks)} blocks")
            return [blocks[selector.index]]
        chosen = blocks[selector.index]
        if not chosen:
            self._fail(selector, f"the slice selects none of its {len(blocks)} blocks")
        return chosen

    def all_stacks(self) -> list[list[nn.Module]]:
        """Every stack of blocks (one, or encoder and decoder), for per-block reports."""
        if self.is_encoder_decoder:
            owners = [self._stack_owner(role) for role in ("encoder", "decoder")]
            stacks = [find_stack(owner, self._no_split) for owner in owners if owner is not None]
        else:
            stacks = [self.main_stack]
        return [list(found[1]) for found in stacks if found is not None]


def find_stack(root: nn.Module, preferred: frozenset[str] = frozenset()) -> tuple[str, nn.ModuleList] | None:
    """The ``ModuleList`` of same-class modules under ``root`` that is the main stack of blocks.

    Preference: element class listed in ``preferred`` (``_no_split_modules``), then most parameters, then
    most elements. Returns ``(name relative to root, ModuleList)`` or None.
    """
    best: tuple[tuple[bool, int, int], str, nn.ModuleList] | None = None
    for name, module in root.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        first_type = type(module[0])
        if any(type(element) is not first_type for element in module):
            continue
        score = (first_type.__name__ in preferred, sum(p.numel() for p in module.parameters()), len(module))
        if best is None or score > best[0]:
            best = (score, name, module)
    return None if best is None else (best[1], best[2])
