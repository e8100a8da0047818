"""Tiny, seeded transformers models built from configs: the architecture matrix of the test suite."""

from __future__ import annotations

import torch
import transformers

VOCAB = 97

_CONFIGS = {
    "bert": (
        "BertConfig",
        dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37, vocab_size=VOCAB),
    ),
    "distilbert": (
        "DistilBertConfig",
        dict(dim=32, n_layers=3, n_heads=2, hidden_dim=37, vocab_size=VOCAB),
    ),
    "roberta": (
        "RobertaConfig",
        dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37, vocab_size=VOCAB),
    ),
    "gpt2": (
        "GPT2Config",
        dict(n_embd=32, n_layer=3, n_head=2, vocab_size=VOCAB, n_positions=64, bos_token_id=1, eos_token_id=2),
    ),
    "llama": (
        "LlamaConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=37,
            vocab_size=VOCAB,
            max_position_embeddings=64,
        ),
    ),
    "t5": (
        "T5Config",
        dict(d_model=32, num_layers=2, num_decoder_layers=2, num_heads=2, d_ff=37, d_kv=16, vocab_size=VOCAB),
    ),
    "vit": (
        "ViTConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=37,
            image_size=16,
            patch_size=8,
        ),
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=37,
            moe_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            vocab_size=VOCAB,
            max_position_embeddings=64,
        ),
    ),
}

DEFAULT_CLASSES = {
    "bert": "BertForSequenceClassification",
    "distilbert": "DistilBertForSequenceClassification",
    "roberta": "RobertaForSequenceClassification",
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "t5": "T5ForConditionalGeneration",
    "vit": "ViTForImageClassification",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}

ARCHITECTURES = tuple(_CONFIGS)


def tiny_config(arch: str, **overrides) -> transformers.PretrainedConfig:
    """The tiny config of ``arch`` with ``overrides`` applied."""
    config_class, kwargs = _CONFIGS[arch]
    return getattr(transformers, config_class)(**{**kwargs, **overrides})


def tiny_model(arch: str, model_class: str | None = None, seed: int = 0, **overrides) -> torch.nn.Module:
    """A seeded tiny model of ``arch`` (its default task class unless ``model_class`` is given)."""
    torch.manual_seed(seed)
    cls = getattr(transformers, model_class or DEFAULT_CLASSES[arch])
    return cls(tiny_config(arch, **overrides)).eval()


def random_text_dataset(rows: int = 32, length: int = 12, num_labels: int = 2, seed: int = 0):
    """A seeded ``datasets.Dataset`` of random token ids with a learnable label (token 5 present or not)."""
    import datasets

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(6, VOCAB, (rows, length), generator=generator)
    labels = torch.randint(0, num_labels, (rows,), generator=generator)
    input_ids[:, 1] = torch.where(labels == 1, 5, input_ids[:, 1])
    return datasets.Dataset.from_dict(
        {
            "input_ids": input_ids.tolist(),
            "attention_mask": torch.ones_like(input_ids).tolist(),
            "labels": labels.tolist(),
        }
    )
