"""The delta subcommands: inspect, verify and merge, through their argparse parsers and handlers."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_merge import BERT, make_delta, save_base

from hf_freeze.commands.delta import register
from hf_freeze.delta import load_delta
from hf_freeze.errors import DeltaError


def run(*argv: str | Path) -> int:
    """Parse ``argv`` with the delta subcommands registered and run the handler."""
    parser = argparse.ArgumentParser(prog="hf-freeze")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(arg) for arg in argv])
    return args.handler(args)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_base(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="module")
def other_base(tmp_path_factory) -> Path:
    return save_base(tmp_path_factory.mktemp("other_base") / "model", seed=1)


@pytest.fixture(scope="module")
def head(base, tmp_path_factory) -> Path:
    """A delta of ``base`` in which the classifier trained."""
    return make_delta(base, tmp_path_factory.mktemp("head") / "delta", ("classifier.",), shift=1.0)


def test_inspect_shows_base_recipe_and_tensor_table(base, head, capsys):
    assert run("inspect", head) == 0
    out = capsys.readouterr().out
    assert f"base: {base} (BertForSequenceClassification" in out
    assert "recipe: none recorded" in out
    assert "tensors: 2, 66 values, 264 B; files: 1," in out
    assert "classifier.weight  float32   [2, 32]          256" in out
    assert "classifier.bias    float32   [2]              8" in out


def test_verify_ok(base, head, capsys):
    assert run("verify", head, "--base", base) == 0
    assert capsys.readouterr().out.startswith(f"OK {head} fits {base}: 2 tensors checked")


def test_verify_refuses_another_base(other_base, head):
    with pytest.raises(DeltaError, match="was made for another base"):
        run("verify", head, "--base", other_base)


def test_verify_refuses_a_folder_that_is_not_a_delta(base):
    with pytest.raises(DeltaError, match="is not a delta folder"):
        run("verify", base, "--base", base)


def test_merge_writes_a_save_pretrained_folder(base, head, tmp_path, capsys):
    out = tmp_path / "merged"
    assert run("merge", "--base", base, "--delta", head, "--out", out) == 0
    assert "Merged 1 delta(s)" in capsys.readouterr().out
    merged = BERT.from_pretrained(out).state_dict()
    expected = load_delta(BERT.from_pretrained(base), head).state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in merged.items())


def test_merge_with_weights(base, head, tmp_path):
    out = tmp_path / "merged"
    argv = ("--delta", head, "--delta", head, "--weights", "0.5,0.5", "--out", out)
    assert run("merge", "--base", base, *argv) == 0
    merged = BERT.from_pretrained(out)
    expected = load_delta(BERT.from_pretrained(base), head)
    assert torch.allclose(merged.classifier.weight, expected.classifier.weight)


def test_merge_refuses_to_replace_an_unrelated_folder(base, head, tmp_path):
    shutil.copytree(head, tmp_path / "taken")
    with pytest.raises(DeltaError, match=r"it exists and is not an earlier output .*no config.json"):
        run("merge", "--base", base, "--delta", head, "--out", tmp_path / "taken")
    assert (tmp_path / "taken" / "delta_config.json").is_file()


@pytest.mark.parametrize(("weights", "error"), [("a,b", "comma-separated numbers"), ("1,nan", "finite numbers")])
def test_merge_rejects_malformed_weights(base, head, tmp_path, capsys, weights, error):
    with pytest.raises(SystemExit) as exit_info:
        run("merge", "--base", base, "--delta", head, "--weights", weights, "--out", tmp_path)
    assert exit_info.value.code == 2
    assert error in capsys.readouterr().err


def test_merge_refuses_weight_count_mismatch(base, head, tmp_path):
    with pytest.raises(DeltaError, match="merge got 1 deltas and 2 weights"):
        run("merge", "--base", base, "--delta", head, "--weights", "1,1", "--out", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_merge_force_bakes_a_delta_into_another_base(other_base, head, tmp_path):
    with pytest.raises(DeltaError, match=r"another base.*or pass force=True \(merge --force\)"):
        run("merge", "--base", other_base, "--delta", head, "--out", tmp_path / "refused")
    assert run("merge", "--base", other_base, "--delta", head, "--out", tmp_path / "forced", "--force") == 0
    merged = BERT.from_pretrained(tmp_path / "forced")
    assert torch.equal(merged.classifier.weight, load_file(head / "delta.safetensors")["classifier.weight"])
    assert torch.equal(merged.bert.pooler.dense.weight, BERT.from_pretrained(other_base).bert.pooler.dense.weight)
