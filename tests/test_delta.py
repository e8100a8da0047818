"""Delta checkpoints: round trips, what a delta holds, sizes, sharding, atomic saves, the fingerprint."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from tiny import VOCAB, tiny_model
from torch.nn.parallel import DistributedDataParallel

import hf_freeze.delta as delta_module
from hf_freeze.apply import apply_recipe
from hf_freeze.delta import CONFIG_NAME, INDEX_NAME, load_delta, load_model_with_delta, save_delta
from hf_freeze.errors import DeltaError
from hf_freeze.fingerprint import fingerprint, fingerprint_tensors

SENTENCES = [
    "What a wonderful, delightful film.",
    "I loved every minute of it.",
    "A joyful and moving story.",
    "Brilliant acting and a great script.",
    "This was a terrible waste of time.",
    "Awful, boring and far too long.",
    "I hated the ending.",
    "The worst meal I have ever eaten.",
]
LABELS = [1, 1, 1, 1, 0, 0, 0, 0]
ID2LABEL = {0: "NEGATIVE", 1: "POSITIVE"}


def train_steps(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int, lr: float = 1e-2) -> None:
    """A few seeded AdamW steps on what requires grad; leaves the model in eval mode."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def train_only(model: torch.nn.Module, *prefixes: str) -> None:
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(prefixes)


def folder_bytes(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.iterdir())


def trainable_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def random_ids(rows: int, cols: int, high: int) -> torch.Tensor:
    return torch.randint(5, high, (rows, cols), generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------ the real MiniLM, head only


def minilm(path: str) -> torch.nn.Module:
    return transformers.AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}
    )


@pytest.fixture(scope="module")
def tokenizer(minilm_path: str) -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def trained_minilm(minilm_path, tokenizer, tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """MiniLM with a 2-label head trained alone for a few steps, and its delta."""
    torch.manual_seed(0)  # the new head's initialisation
    model = minilm(minilm_path)
    train_only(model, "classifier.")
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"), labels=torch.tensor(LABELS))
    train_steps(model, batch, steps=15)
    path = save_delta(model, tmp_path_factory.mktemp("minilm") / "delta")
    return model, path


def test_minilm_round_trip_is_bitwise(trained_minilm, minilm_path, tokenizer):
    trained, path = trained_minilm
    fresh = minilm(minilm_path).eval()
    assert not torch.equal(fresh.classifier.weight, trained.classifier.weight)
    load_delta(fresh, path)
    for batch in (
        {"input_ids": random_ids(4, 12, 30000)},
        dict(tokenizer(SENTENCES, padding=True, return_tensors="pt")),
    ):
        with torch.no_grad():
            assert torch.equal(fresh(**batch).logits, trained(**batch).logits)


def test_minilm_delta_holds_only_the_head_and_is_small(trained_minilm):
    trained, path = trained_minilm
    config = json.loads((path / CONFIG_NAME).read_text())
    assert list(config["tensors"]) == ["classifier.weight", "classifier.bias"]
    assert config["base"]["model_class"] == "BertForSequenceClassification"
    assert config["base"]["config"]["id2label"] == {"0": "NEGATIVE", "1": "POSITIVE"}
    assert folder_bytes(path) <= 1.01 * trainable_bytes(trained) + 64 * 1024
    assert "load_model_with_delta" in (path / "README.md").read_text()


def test_pipeline_with_loaded_delta_predicts_like_the_trained_model(trained_minilm, tokenizer):
    trained, path = trained_minilm
    loaded = load_model_with_delta(path)
    assert not loaded.training
    expected = transformers.pipeline("text-classification", model=trained, tokenizer=tokenizer)(SENTENCES)
    got = transformers.pipeline("text-classification", model=loaded, tokenizer=tokenizer)(SENTENCES)
    assert got == expected
    assert {row["label"] for row in got} == {"NEGATIVE", "POSITIVE"}


# ------------------------------------------------------------------------------ tiny Llama, tied, top block


def tied_llama(seed: int = 0) -> torch.nn.Module:
    return tiny_model("llama", seed=seed, tie_word_embeddings=True)


def trained_llama(*prefixes: str) -> torch.nn.Module:
    model = tied_llama()
    train_only(model, *prefixes)
    ids = random_ids(2, 10, VOCAB)
    train_steps(model, {"input_ids": ids, "labels": ids}, steps=3)
    return model


def test_llama_last_block_round_trip_is_bitwise(tmp_path):
    trained = trained_llama("model.layers.2.")
    path = save_delta(trained, tmp_path / "delta")
    fresh = load_delta(tied_llama(), path)
    ids = random_ids(3, 9, VOCAB)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, trained(input_ids=ids).logits)
    names = json.loads((path / CONFIG_NAME).read_text())["tensors"]
    assert names and all(name.startswith("model.layers.2.") for name in names)
    assert folder_bytes(path) <= 1.01 * trainable_bytes(trained) + 64 * 1024


def test_tied_embedding_is_stored_once_and_loads_into_both_names(tmp_path):
    trained = trained_llama("model.embed_tokens.")
    assert trained.lm_head.weight.requires_grad
    path = save_delta(trained, tmp_path / "delta")
    config = json.loads((path / CONFIG_NAME).read_text())
    assert list(config["tensors"]) == ["model.embed_tokens.weight"]
    assert config["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    untied = tiny_model("llama", tie_word_embeddings=False)
    load_delta(untied, path, force=True)  # another base (untied): both names receive the tensor
    assert torch.equal(untied.lm_head.weight, trained.model.embed_tokens.weight)
    assert torch.equal(untied.model.embed_tokens.weight, trained.model.embed_tokens.weight)


def test_sharded_delta_round_trips(tmp_path):
    trained = trained_llama("model.layers.2.")
    path = save_delta(trained, tmp_path / "delta", max_shard_size=3000)
    shards = sorted(p.name for p in path.glob("delta-*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"delta-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((path / INDEX_NAME).read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["weight_map"].keys() == json.loads((path / CONFIG_NAME).read_text())["tensors"].keys()
    assert states_equal(load_delta(tied_llama(), path), trained)


# ------------------------------------------------------------------------------ what a delta holds


def test_new_head_absent_from_base_checkpoint_is_included_even_when_frozen(tmp_path):
    tiny_model("bert", model_class="BertModel").save_pretrained(tmp_path / "base")
    torch.manual_seed(3)
    model = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "base")
    train_only(model, "bert.pooler.")
    path = save_delta(model, tmp_path / "delta")
    names = set(json.loads((path / CONFIG_NAME).read_text())["tensors"])
    assert names == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}
    torch.manual_seed(4)  # another random head: the delta's head replaces it
    fresh = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "base")
    assert states_equal(load_delta(fresh, path), model)


def test_persistent_buffers_of_trained_modules_only(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4))
    model(torch.randn(8, 3))  # running statistics move
    model[2].requires_grad_(False)
    model[0].requires_grad_(False)
    path = save_delta(model, tmp_path / "delta")
    config = json.loads((path / CONFIG_NAME).read_text())
    assert list(config["tensors"]) == [
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert config["base"]["model_class"] == "Sequential"


def test_recipe_and_phase_come_from_the_applied_recipe(tmp_path):
    model = tiny_model("bert")
    apply_recipe(model, "train_head_only")
    config = json.loads((save_delta(model, tmp_path / "delta") / CONFIG_NAME).read_text())
    assert config["recipe"]["name"] == "train_head_only"
    assert config["phase"] == 0
    explicit = save_delta(model, tmp_path / "explicit", recipe={"name": "mine"})
    assert json.loads((explicit / CONFIG_NAME).read_text())["recipe"] == {"name": "mine"}


def test_nothing_trainable_is_refused(tmp_path):
    model = tiny_model("bert").requires_grad_(False)
    with pytest.raises(DeltaError, match="Nothing in the BertForSequenceClassification is trainable"):
        save_delta(model, tmp_path / "delta")
    assert not (tmp_path / "delta").exists()


def test_ddp_wrapper_saves_and_loads_canonical_names(tmp_path):
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        trained = trained_llama("model.layers.2.")
        path = save_delta(DistributedDataParallel(trained), tmp_path / "delta")
        wrapped = DistributedDataParallel(tied_llama())
        load_delta(wrapped, path)
    finally:
        torch.distributed.destroy_process_group()
    assert all(not name.startswith("module.") for name in json.loads((path / CONFIG_NAME).read_text())["tensors"])
    assert states_equal(wrapped.module, trained)


def test_peft_lora_delta_round_trips(tmp_path):
    def lora_bert() -> torch.nn.Module:
        config = LoraConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"])
        return get_peft_model(tiny_model("bert"), config)

    torch.manual_seed(0)
    trained = lora_bert()
    ids = random_ids(2, 8, VOCAB)
    train_steps(trained, {"input_ids": ids, "labels": torch.tensor([0, 1])}, steps=3)
    path = save_delta(trained, tmp_path / "delta")
    names = json.loads((path / CONFIG_NAME).read_text())["tensors"]
    assert "bert.encoder.layer.0.attention.self.query.lora_B.default.weight" in names
    assert not any(name.startswith("base_model") or "base_layer" in name for name in names)
    torch.manual_seed(5)
    fresh = lora_bert()
    load_delta(fresh, path)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, trained(input_ids=ids).logits)


# ------------------------------------------------------------------------------ atomic saves


def test_interrupted_save_leaves_the_previous_delta_loadable(tmp_path, monkeypatch):
    first = trained_llama("model.layers.2.")
    path = save_delta(first, tmp_path / "delta")
    real_save = delta_module.save_file

    def half_then_fail(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(delta_module, "save_file", half_then_fail)
    second = trained_llama("model.layers.1.")
    with pytest.raises(OSError, match="disk full"):
        save_delta(second, path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["delta"]
    assert states_equal(load_delta(tied_llama(), path), first)
    save_delta(second, path)  # a completed save replaces it
    assert states_equal(load_delta(tied_llama(), path), second)


def test_save_refuses_to_replace_a_folder_that_is_not_a_delta(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    with pytest.raises(DeltaError, match=r"Refusing to write into .*out: it exists and is not an earlier output"):
        save_delta(trained_llama("model.layers.2."), tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"


def test_saved_tensors_are_contiguous_cpu_copies(tmp_path):
    model = torch.nn.Linear(4, 3)
    model.weight = torch.nn.Parameter(torch.randn(4, 3).t())  # non-contiguous
    path = save_delta(model, tmp_path / "delta")
    with safe_open(path / "delta.safetensors", framework="pt") as handle:
        assert torch.equal(handle.get_tensor("weight"), model.weight.detach())


# ------------------------------------------------------------------------------ fingerprint


def test_fingerprint_tells_seeds_apart_and_ignores_what_trained():
    trained = trained_llama("model.layers.2.")
    delta_names = [name for name, p in trained.named_parameters() if p.requires_grad]
    assert fingerprint(trained, delta_names) == fingerprint(tied_llama(), delta_names)
    assert fingerprint(tied_llama(seed=0), delta_names) != fingerprint(tied_llama(seed=1), delta_names)
    assert fingerprint(tied_llama(), delta_names)["tensors"] == fingerprint(tied_llama())["tensors"] - len(delta_names)


def test_fingerprint_cost_does_not_grow_with_tensor_size():
    huge = torch.zeros(1).expand(10**11)  # 10^11 elements, one stored value: reading it all would take minutes
    start = time.perf_counter()
    result = fingerprint_tensors({"huge": huge})
    assert time.perf_counter() - start < 1.0
    assert result["tensors"] == 1


def test_fingerprint_refuses_meta_tensors():
    with torch.device("meta"):
        model = torch.nn.Linear(2, 2)
    with pytest.raises(DeltaError, match="Tensor 'bias' is on the meta device"):
        fingerprint(model)


def test_fingerprint_of_a_fully_trained_model_covers_nothing():
    model = tiny_model("bert")
    everything = [name for name, _ in model.named_parameters()]
    assert fingerprint(model, everything)["tensors"] == 0
