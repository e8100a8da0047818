"""``scripts/train.py`` end to end on tiny models and tiny data files (issue 5, "Done when" 2-4).

- Sequence classification: a tiny BERT, csv files with string labels; the delta holds exactly the recipe's
  trainable set, and the printed pipeline snippet, run as printed, reproduces the script's eval loss.
- Causal LM: a tiny Llama, jsonl files; the same delta checks, and the loaded delta reproduces the eval loss.
  (Llama, not GPT-2: transformers 5's Trainer counts a GPT2LMHeadModel's loss tokens before the shift, so its
  eval loss is (L-1)/L of the model's own loss; a Llama's matches the model's.)
- Two processes (``accelerate launch --multi_gpu`` on CPU): world size 2, one plan summary, one delta.
- Bad arguments: one sentence on stderr, exit code 2, nothing written, no training.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from launch import REPO, launch_two_processes, run_one_process
from safetensors.torch import load_file
from tiny import tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast

from hf_freeze import Recipe, plan
from hf_freeze.delta import read_delta_config

pytestmark = pytest.mark.slow

SCRIPT = REPO / "scripts" / "train.py"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
POSITIVE = ["good", "great", "happy", "love", "nice", "fine", "best", "fun"]
NEGATIVE = ["bad", "sad", "awful", "hate", "poor", "worst", "ugly", "dull"]
FILLER = ["the", "a", "movie", "book", "day", "food", "was", "is", "it", "and", "very", "so", "our", "trip"]
COMMON = ("--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--learning_rate", "0.01")
COMMON += ("--max_length", "16", "--logging_steps", "5", "--seed", "0", "--disable_tqdm", "true")


# ---------------------------------------------------------------------------------------------- fixtures


def word_tokenizer(causal: bool) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over the test vocabulary; BERT-style ``[CLS] text [SEP]`` unless causal."""
    vocab = {token: index for index, token in enumerate(SPECIALS + POSITIVE + NEGATIVE + FILLER)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if not causal:
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        bos_token="[CLS]",
        eos_token="[SEP]",
    )


def save_tiny(folder: Path, arch: str, causal: bool) -> Path:
    """A tiny seeded model of ``arch`` with the word tokenizer, as a ``from_pretrained`` folder."""
    overrides = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3} if causal else {}
    tiny_model(arch, **overrides).save_pretrained(folder)
    word_tokenizer(causal).save_pretrained(folder)
    return folder


def sentences(count: int, seed: int) -> list[tuple[str, int]]:
    """``count`` short sentences with one or two sentiment words among fillers; label 1 = positive."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        label = index % 2
        words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if label else NEGATIVE, rng.randint(1, 2))
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, int]]) -> Path:
    """``text,label`` with the labels as names (``pos``/``neg``)."""
    path.write_text("text,label\n" + "".join(f"{text},{'pos' if label else 'neg'}\n" for text, label in rows))
    return path


def write_jsonl(path: Path, rows: list[tuple[str, int]]) -> Path:
    """One ``{"text": ..., "label": ...}`` object per line, integer labels."""
    path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows))
    return path


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_bert"), "bert", causal=False)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_llama"), "llama", causal=True)


@pytest.fixture(scope="module")
def csv_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("csv")
    return write_csv(folder / "train.csv", sentences(48, seed=0)), write_csv(folder / "dev.csv", sentences(16, seed=1))


@pytest.fixture(scope="module")
def jsonl_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("jsonl")
    return (
        write_jsonl(folder / "train.jsonl", sentences(48, seed=2)),
        write_jsonl(folder / "dev.jsonl", sentences(16, seed=3)),
    )


def run_script(*args: str):
    """``python scripts/train.py args`` in a subprocess (CPU, offline); fails the test with its output if it fails."""
    result = run_one_process(SCRIPT, *args)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory, bert_folder, csv_files):
    out = tmp_path_factory.mktemp("cls") / "out"
    train, dev = csv_files
    args = ("--model_name_or_path", str(bert_folder), "--train_file", str(train), "--validation_file", str(dev))
    result = run_script(*args, "--recipe", "freeze_encoder", "--output_dir", str(out), *COMMON)
    return out, result


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory, llama_folder, jsonl_files):
    out = tmp_path_factory.mktemp("clm") / "out"
    train, dev = jsonl_files
    args = ("--model_name_or_path", str(llama_folder), "--train_file", str(train), "--validation_file", str(dev))
    result = run_script(*args, "--task", "causal-lm", "--recipe", "train_top_blocks", "--output_dir", str(out), *COMMON)
    return out, result


# ---------------------------------------------------------------------------------------------- helpers


def pipeline_snippet(stdout: str) -> str:
    """The two lines of Python the script prints after 'Load it into a pipeline:'."""
    lines = stdout.split("Load it into a pipeline:", 1)[1].strip().splitlines()[:2]
    assert lines[0].strip().startswith("from hf_freeze import load_model_with_delta")
    return "\n".join(line.strip() for line in lines)


def check_delta_matches_recipe(delta: Path, base: torch.nn.Module, recipe: str) -> dict[str, torch.Tensor]:
    """The delta holds exactly the recipe's trainable tensors, and every one of them moved; return them."""
    expected = set(plan(base, Recipe.load(recipe)).trainable)
    config = read_delta_config(delta)
    assert set(config["tensors"]) == expected
    assert config["recipe"]["name"] == recipe
    tensors = load_file(delta / "delta.safetensors")
    base_state = base.state_dict()
    assert set(tensors) == expected
    assert all(not torch.equal(tensors[name], base_state[name]) for name in expected)
    return tensors


def saved_metrics(out: Path, split: str) -> dict[str, float]:
    return json.loads((out / f"{split}_results.json").read_text())


# ---------------------------------------------------------------------------------------------- runs


def test_classification_prints_plan_result_and_snippet(classification_run):
    out, result = classification_run
    assert "Plan: recipe 'freeze_encoder' on BertForSequenceClassification" in result.stdout
    assert "majority-class baseline 0.500" in result.stdout
    assert saved_metrics(out, "train")["world_size"] == 1
    assert saved_metrics(out, "eval")["eval_majority_baseline"] == 0.5
    assert f"Delta: {out / 'delta'}" in result.stdout
    assert "memory on rank 0 of 1 (none): parameters " in result.stdout
    assert "Traceback" not in result.stderr


def test_classification_delta_reproduces_the_eval_loss(classification_run, bert_folder, csv_files):
    out, result = classification_run
    base = AutoModelForSequenceClassification.from_pretrained(bert_folder)
    check_delta_matches_recipe(out / "delta", base, "freeze_encoder")
    namespace: dict = {}
    exec(pipeline_snippet(result.stdout), namespace)  # the snippet exactly as printed
    pipe = namespace["pipe"]
    assert pipe.model.config.id2label == {0: "neg", 1: "pos"}
    rows = sentences(16, seed=1)
    batch = pipe.tokenizer([text for text, _ in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        loss = pipe.model(**batch, labels=torch.tensor([label for _, label in rows])).loss.item()
    assert loss == pytest.approx(saved_metrics(out, "eval")["eval_loss"], rel=1e-4)
    assert {prediction["label"] for prediction in pipe([text for text, _ in rows])} <= {"neg", "pos"}


def test_causal_lm_reports_perplexity_and_its_delta_reproduces_the_eval_loss(causal_run, llama_folder, jsonl_files):
    out, result = causal_run
    assert "Plan: recipe 'train_top_blocks' on LlamaForCausalLM" in result.stdout
    metrics = saved_metrics(out, "eval")
    assert metrics["eval_perplexity"] < metrics["before_perplexity"]
    assert "perplexity" in result.stdout and "text-generation" in result.stdout
    base = AutoModelForCausalLM.from_pretrained(llama_folder)
    check_delta_matches_recipe(out / "delta", base, "train_top_blocks")
    namespace: dict = {}
    exec(pipeline_snippet(result.stdout), namespace)
    model, tokenizer = namespace["pipe"].model, namespace["pipe"].tokenizer
    ids = [
        token
        for line in jsonl_files[1].read_text().splitlines()
        for token in tokenizer(json.loads(line)["text"])["input_ids"]
    ]
    blocks = torch.tensor([ids[start : start + 16] for start in range(0, len(ids) - 15, 16)])
    with torch.no_grad():
        loss = model(input_ids=blocks, labels=blocks).loss.item()
    assert loss == pytest.approx(metrics["eval_loss"], rel=1e-4)


def test_two_processes_train_and_write_one_delta(tmp_path, bert_folder, jsonl_files):
    out = tmp_path / "out"
    args = (
        "--model_name_or_path",
        str(bert_folder),
        "--train_file",
        str(jsonl_files[0]),
        "--recipe",
        "train_top_blocks",
    )
    result = launch_two_processes(SCRIPT, *args, "--output_dir", str(out), *COMMON)
    # Judge the files the ranks wrote, not the exit status (a rank can abort at teardown after finishing).
    assert (out / "train_results.json").is_file(), f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert saved_metrics(out, "train")["world_size"] == 2
    assert result.stdout.count("Plan: recipe 'train_top_blocks'") == 1
    assert result.stdout.count("Load it into a pipeline:") == 1
    for rank in (0, 1):  # each rank reports what it holds under DDP
        assert result.stdout.count(f"memory on rank {rank} of 2 (ddp): parameters ") == 1
    assert sorted(path.name for path in out.iterdir() if path.is_dir()) == ["delta"]
    check_delta_matches_recipe(
        out / "delta", AutoModelForSequenceClassification.from_pretrained(bert_folder), "train_top_blocks"
    )


# ---------------------------------------------------------------------------------------------- bad arguments


def load_script() -> ModuleType:
    """``scripts/train.py`` as a module, to call ``main(argv)`` in this process."""
    if "hf_freeze_train_script" not in sys.modules:
        spec = importlib.util.spec_from_file_location("hf_freeze_train_script", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # HfArgumentParser resolves the dataclasses' annotations through it
        spec.loader.exec_module(module)
    return sys.modules["hf_freeze_train_script"]


@pytest.fixture(scope="module")
def misfit_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipes") / "decoder_only.yaml"
    path.write_text("name: decoder_only\nrules:\n  - select: '@decoder'\n    trainable: false\n")
    return path


BAD_ARGUMENTS = {
    "unknown recipe": (["--recipe", "no_such_recipe"], "Unknown recipe 'no_such_recipe'"),
    "missing data file": (["--train_file", "{tmp}/missing.csv"], "does not exist"),
    "missing column": (["--train_file", "{train}", "--text_column", "sentence"], "Column 'sentence' is not in"),
    "missing label column": (["--train_file", "{train}", "--label_column", "stars"], "Column 'stars' is not in"),
    "recipe does not fit": (["--train_file", "{train}", "--recipe", "{misfit}"], "@decoder"),
    "unknown task": (["--task", "translation"], "Unknown task 'translation'"),
    "unknown flag": (["--no_such_flag", "1"], "Unknown argument '--no_such_flag'"),
    "bad value": (["--learning_rate", "fast"], "invalid float value"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments_end_in_one_sentence_and_exit_2(case, tmp_path, capsys, bert_folder, csv_files, misfit_recipe):
    argv, message = BAD_ARGUMENTS[case]
    values = {"tmp": tmp_path, "train": csv_files[0], "misfit": misfit_recipe}
    argv = [arg.format(**values) for arg in argv]
    out = tmp_path / "out"
    code = load_script().main(["--model_name_or_path", str(bert_folder), "--output_dir", str(out), *argv])
    stderr = capsys.readouterr().err.strip()
    assert code == 2
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: ")
    assert message.lower() in stderr.lower()
    assert not out.exists()


def test_bad_argument_in_a_real_process_has_no_traceback(tmp_path):
    out = tmp_path / "out"
    result = run_one_process(SCRIPT, "--recipe", "no_such_recipe", "--output_dir", str(out))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [
        line for line in result.stderr.splitlines() if line.strip()
    ]
    assert not out.exists()
