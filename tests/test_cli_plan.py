"""``hf-freeze plan`` and ``hf-freeze recipes`` on the real all-MiniLM-L6-v2, checked against a hand count.

MiniLM-L6-H384: vocab 30522, hidden 384, 6 layers, intermediate 1536, 512 positions, 2 token types, a pooler.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from test_packaging import BUNDLED

from hf_freeze.cli import main

V, H, L, I, P, T = 30522, 384, 6, 1536, 512, 2  # noqa: E741 (the config's own letters)
EMBEDDINGS = V * H + P * H + T * H + 2 * H  # three tables + LayerNorm
LAYER_KERNELS = 4 * H * H + H * I + I * H  # q, k, v, attention output; intermediate; output
LAYER_OTHERS = 4 * H + I + H + 2 * 2 * H  # their biases + two LayerNorms
POOLER_KERNEL, POOLER_BIAS = H * H, H
TOTAL = EMBEDDINGS + L * (LAYER_KERNELS + LAYER_OTHERS) + POOLER_KERNEL + POOLER_BIAS
FROZEN = L * LAYER_KERNELS + POOLER_KERNEL  # freeze_dense_kernels: every dense kernel of the bare BertModel
TENSORS = 5 + L * 16 + 2  # embeddings; per layer 6 dense (w, b) + 2 LayerNorms (w, b); pooler
FROZEN_TENSORS = L * 6 + 1
REPO = Path(__file__).resolve().parent.parent


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``hf-freeze ARGV`` in-process; it must succeed; returns stdout."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    return out


def row(text: str, first_cell: str) -> list[str]:
    """The cells of the table row that starts with ``first_cell`` (columns are 2+ spaces apart)."""
    for line in text.splitlines():
        if line.startswith(first_cell + "  "):
            return re.split(r"\s{2,}", line.strip())
    raise AssertionError(f"no row {first_cell!r} in:\n{text}")


def number(cell: str) -> int:
    """``'1,769,472'`` -> 1769472."""
    return int(cell.replace(",", ""))


def test_hand_count_is_the_known_model_size() -> None:
    """The hand count itself: all-MiniLM-L6-v2 has 22.7M parameters."""
    assert TOTAL == 22_713_216 and TENSORS == 103


def test_plan_table_matches_hand_count(capsys: pytest.CaptureFixture[str], minilm_path: str) -> None:
    """The table: per-rule, per-block and total numbers equal the hand count."""
    out = run_cli(capsys, "plan", "--model", minilm_path, "--recipe", "freeze_dense_kernels")
    assert out.startswith("Plan: recipe 'freeze_dense_kernels' on BertModel\n")
    assert row(out, "freeze_dense_kernels, rule 1")[2:] == [str(FROZEN_TENSORS)] * 2 + [f"{FROZEN:,}"]
    assert row(out, "freeze_dense_kernels, rule 3")[2:] == ["0", "0", "0"]  # a bare model has no head
    assert row(out, "default: trainable")[2:] == [str(TENSORS - FROZEN_TENSORS), f"{TOTAL - FROZEN:,}"]
    assert row(out, "embeddings")[1:] == [f"{EMBEDDINGS:,}", "0"]
    for layer in range(L):
        assert row(out, f"encoder.layer.{layer}")[1:] == [f"{LAYER_OTHERS:,}", f"{LAYER_KERNELS:,}"]
    assert row(out, "pooler")[1:] == [f"{POOLER_BIAS:,}", f"{POOLER_KERNEL:,}"]
    trainable = TOTAL - FROZEN
    assert (
        f"Trainable: {TENSORS - FROZEN_TENSORS} of {TENSORS} tensors, {trainable:,} of {TOTAL:,} elements "
        f"({100 * trainable / TOTAL:.2f}%)"
    ) in out
    assert f"AdamW state estimate: {8 * trainable / 2**20:.1f} MiB ({8 * trainable:,} bytes)" in out


def test_plan_json_carries_the_same_numbers(capsys: pytest.CaptureFixture[str], minilm_path: str) -> None:
    """``--json`` holds the hand-counted numbers, and the table shows the same ones."""
    data = json.loads(run_cli(capsys, "plan", "--model", minilm_path, "--recipe", "freeze_dense_kernels", "--json"))
    table = run_cli(capsys, "plan", "--model", minilm_path, "--recipe", "freeze_dense_kernels")
    totals = data["totals"]
    assert (totals["elements"], totals["frozen_elements"], totals["trainable_elements"]) == (
        TOTAL,
        FROZEN,
        TOTAL - FROZEN,
    )
    assert (totals["parameters"], totals["frozen_parameters"]) == (TENSORS, FROZEN_TENSORS)
    assert data["optimizer_state_bytes"]["adamw"] == 8 * (TOTAL - FROZEN)
    assert data["model_class"] == "BertModel" and data["recipe"] == "freeze_dense_kernels" and data["phase"] == 0
    assert [rule["elements"] for rule in data["rules"]] == [FROZEN, 0, 0]
    assert data["default"] == {
        "policy": "trainable",
        "parameters": TENSORS - FROZEN_TENSORS,
        "elements": TOTAL - FROZEN,
    }
    assert len(data["parameters"]) == TENSORS
    assert sum(entry["elements"] for entry in data["parameters"].values()) == TOTAL
    for block in data["blocks"]:
        assert row(table, block["name"])[1:] == [f"{block['trainable_elements']:,}", f"{block['frozen_elements']:,}"]
    query = data["parameters"]["encoder.layer.0.attention.self.query.weight"]
    assert query == {
        "trainable": False,
        "rule": "freeze_dense_kernels, rule 1",
        "via": "encoder.layer.0.attention.self.query.weight",
        "aliases": ["encoder.layer.0.attention.self.query.weight"],
        "shape": [H, H],
        "dtype": "float32",
        "elements": H * H,
    }
    assert data["parameters"]["encoder.layer.0.attention.self.query.bias"]["rule"] is None


def test_plan_from_config_with_task_head(capsys: pytest.CaptureFixture[str], minilm_path: str, tmp_path: Path) -> None:
    """``--config CONFIG.json --task sequence-classification``: the head (384 x 2 + 2) trains despite rule 1."""
    config = tmp_path / "config.json"
    shutil.copy(Path(minilm_path) / "config.json", config)
    argv = ["plan", "--config", str(config), "--recipe", "freeze_dense_kernels", "--task", "sequence-classification"]
    data = json.loads(run_cli(capsys, *argv, "--json", "--explain", "classifier.weight"))
    head = H * 2 + 2
    assert data["model_class"] == "BertForSequenceClassification"
    assert data["totals"]["elements"] == TOTAL + head
    assert data["totals"]["trainable_elements"] == TOTAL - FROZEN + head
    assert data["totals"]["frozen_parameters"] == FROZEN_TENSORS
    assert [(rule["parameters"], rule["elements"]) for rule in data["rules"]] == [
        (FROZEN_TENSORS + 1, FROZEN + H * 2),
        (0, 0),
        (2, head),
    ]
    assert data["explain"] == [
        "classifier.weight: trainable by freeze_dense_kernels, rule 3 (select @head -> trainable)."
    ]
    with_labels = json.loads(run_cli(capsys, *argv, "--num-labels", "5", "--json"))
    assert with_labels["totals"]["elements"] == TOTAL + H * 5 + 5


def test_explain_in_table_mode(capsys: pytest.CaptureFixture[str], minilm_path: str) -> None:
    """``--explain`` adds one sentence per parameter after the table."""
    name = "encoder.layer.3.output.dense.weight"
    out = run_cli(capsys, "plan", "--model", minilm_path, "--recipe", "freeze_dense_kernels", "--explain", name)
    assert out.splitlines()[-1] == (
        f"{name}: frozen by freeze_dense_kernels, rule 1 (all modules; kinds dense; params weight -> frozen)."
    )


def test_recipes_lists_all_six_with_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    """``hf-freeze recipes``: one line per bundled recipe with the description from its file."""
    out = run_cli(capsys, "recipes")
    files = sorted((REPO / "recipes").glob("*.yaml"))
    expected = {path.stem: yaml.safe_load(path.read_text())["description"] for path in files}
    assert set(expected) == BUNDLED
    lines = out.splitlines()
    assert len(lines) == 6
    for line in lines:
        name, description = re.split(r"\s{2,}", line, maxsplit=1)
        assert description == expected[name]
    shown = run_cli(capsys, "recipes", "--show", "train_top_blocks")
    assert shown == (REPO / "recipes" / "train_top_blocks.yaml").read_text()


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "--model", "./no/such/folder", "--recipe", "freeze_encoder"],
        ["plan", "--config", "missing.json", "--recipe", "freeze_encoder"],
        ["plan", "--recipe", "freeze_encoder"],
        ["recipes", "--show", "no_such"],
    ],
    ids=["missing-model", "missing-config", "no-source", "unknown-show"],
)
def test_usage_errors_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """User mistakes on the command line: one line on stderr, exit 2, nothing on stdout."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors exit directly
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("hf-freeze") and "Traceback" not in err
