"""Every refusal of load_delta: one DeltaError sentence naming the tensor or field, and the model untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save
from tiny import tiny_model

from hf_freeze.delta import CONFIG_NAME, load_delta, save_delta
from hf_freeze.errors import DeltaError

WEIGHTS = "delta.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A delta of a tiny BERT whose classifier trained (here: was moved by hand)."""
    model = tiny_model("bert")
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("classifier.")
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    return save_delta(model, tmp_path_factory.mktemp("saved") / "delta")


@pytest.fixture
def delta(saved, tmp_path) -> Path:
    """A private copy of the saved delta, free to damage."""
    return Path(shutil.copytree(saved, tmp_path / "delta"))


def edit_config(folder: Path, edit: Callable[[dict], object]) -> None:
    config = json.loads((folder / CONFIG_NAME).read_text())
    edit(config)
    (folder / CONFIG_NAME).write_text(json.dumps(config))


def replace_weights(folder: Path, data: bytes) -> None:
    """Write ``data`` as the delta's tensor file and record its true size and hash (a consistent but bad writer)."""
    (folder / WEIGHTS).write_bytes(data)
    record = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    edit_config(folder, lambda config: config["files"].__setitem__(WEIGHTS, record))


def saved_tensors(folder: Path, **changes: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The delta's tensors with ``changes`` applied (None removes a tensor)."""
    tensors = {**load_file(folder / WEIGHTS), **changes}
    return {name: tensor for name, tensor in tensors.items() if tensor is not None}


def set_spec(folder: Path, name: str, tensor: torch.Tensor) -> None:
    spec = {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)}
    edit_config(folder, lambda config: config["tensors"].__setitem__(name, spec))


def lying_header(folder: Path) -> bytes:
    """The tensor file with a header claiming a larger classifier.weight than its bytes hold."""
    data = (folder / WEIGHTS).read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["classifier.weight"]["shape"] = [4, 32]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


def flip_last_byte(folder: Path) -> None:
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (folder / WEIGHTS).write_bytes(bytes(data))


WEIGHT = torch.zeros(2, 32)

REFUSALS: dict[str, tuple[Callable[[Path], object], str]] = {
    "no config": (lambda d: (d / CONFIG_NAME).unlink(), "is not a delta folder: it has no delta_config.json"),
    "config not json": (lambda d: (d / CONFIG_NAME).write_text("{oops"), "delta_config.json is not valid JSON"),
    "config not an object": (lambda d: (d / CONFIG_NAME).write_text("[1]"), "does not hold a JSON object"),
    "missing field": (lambda d: edit_config(d, lambda c: c.pop("fingerprint")), "lacks the field 'fingerprint'"),
    "missing nested field": (
        lambda d: edit_config(d, lambda c: c["base"].pop("config_hash")),
        "lacks the field 'base.config_hash'",
    ),
    "wrong field type": (
        lambda d: edit_config(d, lambda c: c.__setitem__("format_version", "1")),
        "field 'format_version' that is not int",
    ),
    "newer format": (
        lambda d: edit_config(d, lambda c: c.__setitem__("format_version", 2)),
        "format_version 2, newer than the 1 .* reads; upgrade hf_freeze",
    ),
    "bad tensor spec": (
        lambda d: edit_config(d, lambda c: c["tensors"].__setitem__("classifier.bias", {"dtype": "floaty"})),
        "no valid dtype and shape for tensor 'classifier.bias'",
    ),
    "unknown tensor": (
        lambda d: set_spec(d, "bert.pooler.extra", WEIGHT),
        "tensor 'bert.pooler.extra', which is not a parameter or persistent buffer of the "
        "BertForSequenceClassification",
    ),
    "non-persistent buffer": (
        lambda d: set_spec(d, "bert.embeddings.position_ids", torch.zeros(1, 512, dtype=torch.int64)),
        "'bert.embeddings.position_ids', which is not a parameter or persistent buffer",
    ),
    "unknown alias": (
        lambda d: edit_config(d, lambda c: c["aliases"].__setitem__("head.weight", "classifier.weight")),
        "'head.weight', which is not a parameter",
    ),
    "alias to unlisted tensor": (
        lambda d: edit_config(d, lambda c: c["aliases"].__setitem__("classifier.bias", "nothing")),
        "ties alias 'classifier.bias' to 'nothing', which it does not list",
    ),
    "wrong shape": (
        lambda d: (
            set_spec(d, "classifier.weight", torch.zeros(3, 32)),
            replace_weights(d, save(saved_tensors(d, **{"classifier.weight": torch.zeros(3, 32)}))),
        ),
        r"records tensor 'classifier.weight' as float32 \[3, 32\] but the model has float32 \[2, 32\]",
    ),
    "wrong dtype": (
        lambda d: (
            set_spec(d, "classifier.weight", WEIGHT.half()),
            replace_weights(d, save(saved_tensors(d, **{"classifier.weight": WEIGHT.half()}))),
        ),
        r"records tensor 'classifier.weight' as float16 \[2, 32\] but the model has float32",
    ),
    "file disagrees with config": (
        lambda d: replace_weights(d, save(saved_tensors(d, **{"classifier.weight": WEIGHT.double()}))),
        r"stores tensor 'classifier.weight' as float64 \[2, 32\] but delta_config.json records float32",
    ),
    "missing tensor": (
        lambda d: replace_weights(d, save(saved_tensors(d, **{"classifier.bias": None}))),
        "lists tensor 'classifier.bias' in delta_config.json but none of its files holds it",
    ),
    "unlisted tensor in file": (
        lambda d: replace_weights(d, save(saved_tensors(d, **{"bert.pooler.dense.bias": torch.zeros(32)}))),
        "holds tensor 'bert.pooler.dense.bias' that delta_config.json does not list",
    ),
    "path-like name in file": (
        lambda d: replace_weights(d, save(saved_tensors(d, **{"../../etc/passwd": torch.zeros(1)}))),
        "names a tensor '../../etc/passwd' with a path-like or empty component",
    ),
    "missing file": (lambda d: (d / WEIGHTS).unlink(), "lacks its tensor file delta.safetensors"),
    "path-like file name": (
        lambda d: edit_config(d, lambda c: c.__setitem__("files", {"../delta.safetensors": c["files"][WEIGHTS]})),
        "lists a tensor file '../delta.safetensors' that is not a plain .safetensors name",
    ),
    "truncated file": (
        lambda d: (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:100]),
        "has 100 bytes but delta_config.json records .*: it is truncated or corrupted",
    ),
    "corrupted file": (flip_last_byte, "is corrupted: its SHA-256 differs"),
    "header lies about sizes": (
        lambda d: replace_weights(d, lying_header(d)),
        r"delta.safetensors is not a valid safetensors file \(",
    ),
    "not safetensors at all": (
        lambda d: replace_weights(d, b"\x80\x04\x95pickle!"),
        "is not a valid safetensors file",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal_leaves_the_model_unchanged(delta, case):
    damage, message = REFUSALS[case]
    damage(delta)
    model = tiny_model("bert")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(DeltaError, match=message):
        load_delta(model, delta)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


@pytest.mark.parametrize("name", ["../evil", "a/b", "a..b", ".hidden", "trailing.", "/abs.weight", "C:\\x", ""])
def test_path_like_names_in_config_are_refused(delta, name):
    set_spec(delta, name, WEIGHT)
    with pytest.raises(DeltaError, match="with a path-like or empty component"):
        load_delta(tiny_model("bert"), delta)


def test_folder_that_does_not_exist_or_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "nowhere", tmp_path / "file"):
        with pytest.raises(DeltaError, match="is not a delta folder"):
            load_delta(tiny_model("bert"), path)


def test_another_base_is_refused_unless_forced(delta):
    other = tiny_model("bert", seed=1)
    before = {name: tensor.clone() for name, tensor in other.state_dict().items()}
    with pytest.raises(DeltaError, match=r"was made for another base: the fingerprint of the model's .* frozen"):
        load_delta(other, delta)
    assert all(torch.equal(before[name], tensor) for name, tensor in other.state_dict().items())
    load_delta(other, delta, force=True)
    assert torch.equal(other.classifier.weight, tiny_model("bert").classifier.weight + 1.0)
    assert torch.equal(other.bert.pooler.dense.weight, before["bert.pooler.dense.weight"])


def test_another_config_is_refused_naming_the_field(delta):
    model = tiny_model("bert", layer_norm_eps=1e-5)
    with pytest.raises(DeltaError, match="config differs in layer_norm_eps; load it onto the base"):
        load_delta(model, delta)


def test_run_and_task_fields_do_not_count_as_another_base(delta):
    model = tiny_model("bert", hidden_dropout_prob=0.0, problem_type="single_label_classification")
    load_delta(model, delta)
    assert torch.equal(model.classifier.weight, tiny_model("bert").classifier.weight + 1.0)


def test_unknown_fingerprint_algorithm_is_refused(delta):
    edit_config(delta, lambda c: c["fingerprint"].__setitem__("algorithm", "blake3-everything"))
    with pytest.raises(DeltaError, match="fingerprint of kind 'blake3-everything'"):
        load_delta(tiny_model("bert"), delta)
