"""Building transformers models from a folder, a hub id or a bare config, without loading weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from torch import nn

from hf_freeze.errors import UsageError

TASK_CLASSES = {
    "base": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "masked-lm": "AutoModelForMaskedLM",
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
    "image-classification": "AutoModelForImageClassification",
}


def load_config(model: str | None = None, config_file: str | None = None, **overrides) -> transformers.PretrainedConfig:
    """The config of a model folder / hub id, or of a bare ``config.json``; ``overrides`` set fields."""
    if (model is None) == (config_file is None):
        raise UsageError("Give exactly one of a model (folder or hub id) and a config file.")
    source = model if model is not None else config_file
    if config_file is not None and not Path(config_file).is_file():
        raise UsageError(f"Config file {config_file!r} does not exist.")
    if model is not None and model.startswith((".", "/", "~")) and not Path(model).expanduser().is_dir():
        raise UsageError(f"Model folder {model!r} does not exist.")
    try:
        if config_file is not None:
            return transformers.AutoConfig.for_model(**{**_read_config(config_file), **overrides})
        return transformers.AutoConfig.from_pretrained(model, **overrides)
    except (OSError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"Cannot read a model config from {source!r} ({first_line}).") from None


def _read_config(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UsageError(f"Config file {path!r} is not valid JSON ({error}).") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise UsageError(f"Config file {path!r} has no 'model_type'; is it a transformers config.json?")
    return data


def model_class_for(config: transformers.PretrainedConfig, task: str | None = None) -> type:
    """The class to build: the task's auto class, else the config's first architecture, else ``AutoModel``."""
    if task is not None:
        if task not in TASK_CLASSES:
            raise UsageError(f"Unknown task {task!r}; tasks are {', '.join(TASK_CLASSES)}.")
        return getattr(transformers, TASK_CLASSES[task])
    for name in getattr(config, "architectures", None) or ():
        if hasattr(transformers, name):
            return getattr(transformers, name)
    return transformers.AutoModel


def build_empty_model(config: transformers.PretrainedConfig, task: str | None = None) -> nn.Module:
    """Build the model on the meta device: every shape is right, no memory is used, no weights load."""
    cls = model_class_for(config, task)
    with torch.device("meta"):
        try:
            return cls.from_config(config) if cls.__name__.startswith("AutoModel") else cls(config)
        except ValueError as error:
            raise UsageError(f"Cannot build {cls.__name__} from this config ({error}).") from None
