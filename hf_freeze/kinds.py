"""Module kinds used by the ``kinds`` key of a rule: dense, embedding, norm, conv.

Kinds are decided by type, never by module name: a ``torch.nn.Linear`` (and subclasses such as
bitsandbytes' quantized linears), transformers' ``Conv1D`` (GPT-2's transposed dense) and PEFT adapter
layers wrapping a dense layer are all ``dense``.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)


def is_dense(module: nn.Module) -> bool:
    """A linear layer: ``nn.Linear`` or a subclass, ``Conv1D``, or a PEFT layer wrapping one."""
    if isinstance(module, (nn.Linear, Conv1D)):
        return True
    if "peft" in sys.modules:  # PEFT layers can only exist once peft is imported
        from peft.tuners.tuners_utils import BaseTunerLayer

        if isinstance(module, BaseTunerLayer):
            base = module.get_base_layer()
            return base is not module and is_dense(base)
    return False


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: torch's norm layers, or a class named ``...Norm`` (``LlamaRMSNorm``)."""
    return isinstance(module, _NORM_TYPES) or type(module).__name__.lower().endswith("norm")


def is_embedding(module: nn.Module) -> bool:
    """A lookup-table embedding: ``nn.Embedding`` / ``nn.EmbeddingBag`` or a subclass."""
    return isinstance(module, (nn.Embedding, nn.EmbeddingBag))


def is_conv(module: nn.Module) -> bool:
    """A convolution: any ``nn.Conv*d`` / ``nn.ConvTranspose*d``."""
    return isinstance(module, nn.modules.conv._ConvNd)


_CHECKS = {"dense": is_dense, "norm": is_norm, "embedding": is_embedding, "conv": is_conv}


def has_kind(module: torch.nn.Module, kinds: tuple[str, ...]) -> bool:
    """Whether ``module`` is of any of ``kinds`` (``any`` accepts every module)."""
    return any(kind == "any" or _CHECKS[kind](module) for kind in kinds)
