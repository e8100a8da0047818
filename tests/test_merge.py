"""Merging deltas into their base: plain overwrite for one delta, task arithmetic for several."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from tiny import tiny_model

from hf_freeze.delta import load_delta, save_delta
from hf_freeze.errors import DeltaError
from hf_freeze.merge import merge_deltas, save_merged

BERT = transformers.BertForSequenceClassification


def save_base(folder: Path, seed: int = 0) -> Path:
    tiny_model("bert", seed=seed).save_pretrained(folder)
    return folder


def make_delta(base: Path, out: Path, prefixes: tuple[str, ...], shift: float) -> Path:
    """A delta of the model at ``base`` where the tensors under ``prefixes`` trained (moved by ``shift``)."""
    model = BERT.from_pretrained(base)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(prefixes)
        if param.requires_grad:
            with torch.no_grad():
                param.add_(shift * torch.linspace(-1, 1, param.numel()).view_as(param))
    return save_delta(model, out)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge")
    base = save_base(root / "base")
    return {
        "base": base,
        "top": make_delta(base, root / "top", ("classifier.", "bert.encoder.layer.2."), shift=0.5),
        "middle": make_delta(base, root / "middle", ("classifier.", "bert.encoder.layer.1."), shift=-0.25),
        "other": make_delta(save_base(root / "other_base", seed=1), root / "other", ("classifier.",), shift=1.0),
    }


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_single_delta_merge_saves_base_plus_delta(folders, tmp_path):
    merged = merge_deltas(BERT.from_pretrained(folders["base"]), [folders["top"]])
    save_merged(merged, tmp_path / "out")
    reloaded = BERT.from_pretrained(tmp_path / "out")
    expected = load_delta(BERT.from_pretrained(folders["base"]), folders["top"])
    assert reloaded.state_dict().keys() == expected.state_dict().keys()
    assert all(torch.equal(tensor, expected.state_dict()[name]) for name, tensor in reloaded.state_dict().items())


def test_two_deltas_with_half_weights_are_task_arithmetic(folders):
    base = state(BERT.from_pretrained(folders["base"]))
    top = state(load_delta(BERT.from_pretrained(folders["base"]), folders["top"]))
    middle = state(load_delta(BERT.from_pretrained(folders["base"]), folders["middle"]))
    merged = state(merge_deltas(BERT.from_pretrained(folders["base"]), [folders["top"], folders["middle"]], [0.5, 0.5]))

    def arithmetic(*terms: tuple[dict[str, torch.Tensor], float], name: str) -> torch.Tensor:
        start = base[name].double()
        return (start + sum(w * (t[name].double() - start) for t, w in terms)).float()

    for name in ("classifier.weight", "classifier.bias"):
        assert torch.equal(merged[name], arithmetic((top, 0.5), (middle, 0.5), name=name))
        assert torch.allclose(merged[name], (top[name] + middle[name]) / 2)
    top_only = "bert.encoder.layer.2.output.dense.weight"
    assert torch.equal(merged[top_only], arithmetic((top, 0.5), name=top_only))
    middle_only = "bert.encoder.layer.1.attention.self.query.bias"
    assert torch.equal(merged[middle_only], arithmetic((middle, 0.5), name=middle_only))
    assert torch.equal(
        merged["bert.encoder.layer.0.output.dense.weight"], base["bert.encoder.layer.0.output.dense.weight"]
    )


def test_integer_buffers_are_rounded(tmp_path):
    def batchnorm_delta(batches: int, out: Path) -> Path:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
        model[0].requires_grad_(False)
        for _ in range(batches):
            model[1](torch.randn(4, 3))
        return save_delta(model, out)

    deltas = [batchnorm_delta(1, tmp_path / "one"), batchnorm_delta(3, tmp_path / "three")]
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    merge_deltas(base, deltas, [0.5, 0.25])
    assert base[1].num_batches_tracked.dtype == torch.int64
    assert base[1].num_batches_tracked.item() == 1  # round(0.5 * 1 + 0.25 * 3)


@pytest.mark.parametrize(
    ("names", "weights", "message"),
    [
        (["top", "middle"], [0.5], "merge got 2 deltas and 1 weights"),
        ([], None, "merge got 0 deltas and 0 weights"),
        (["top", "other"], None, "was made for another base"),
    ],
)
def test_refused_merges_leave_the_base_unchanged(folders, names, weights, message):
    model = BERT.from_pretrained(folders["base"])
    before = state(model)
    with pytest.raises(DeltaError, match=message):
        merge_deltas(model, [folders[name] for name in names], weights)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
