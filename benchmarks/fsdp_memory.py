"""Per-rank memory of sharded training under a recipe: FSDP1 with the trainable wrap policy, FSDP1 with one mixed
unit, FSDP2 — gradients and optimizer state against the trainable-only limit (``hf_freeze.memory``).

Runs the two-rank CPU workers of the test suite (``tests/workers/fsdp1_train.py``, ``tests/workers/fsdp2_train.py``:
the tiny BERT of ``workers.ddp_train``, head then top block) and reports, per rank, what each holds while
gradients exist, after the phase change (head and top block train: 27,420 trainable bytes in all).

    python benchmarks/fsdp_memory.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from results import machine, write_section

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from launch import WORKERS, launch_two_processes, rank_outputs  # noqa: E402 (tests/ is put on the path above)

RUNS = {
    "FSDP1, trainable_wrap_policy, use_orig_params=False": ("fsdp1_train.py", "policy"),
    "FSDP1, one mixed unit, use_orig_params=True": ("fsdp1_train.py", "orig"),
    "FSDP2, fully_shard per block (mixed units)": ("fsdp2_train.py", None),
}


def measure() -> dict[str, list[dict[str, Any]]]:
    """Run each worker once; the memory figures of every rank, per configuration."""
    figures: dict[str, list[dict[str, Any]]] = {}
    outputs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for worker in sorted({worker for worker, _ in RUNS.values()}):
            out = Path(tmp, worker)
            paths = rank_outputs(launch_two_processes(WORKERS / worker, "--out", str(out)), out, "result.json")
            outputs[worker] = [json.loads(path.read_text()) for path in paths]
    for label, (worker, key) in RUNS.items():
        figures[label] = [(result[key] if key else result)["memory"] for result in outputs[worker]]
    return figures


def table(figures: dict[str, list[dict[str, Any]]]) -> str:
    """The Markdown section: one row per configuration and rank."""
    rows = [
        "| configuration | rank | parameters | gradients | gradient limit | optimizer state | state limit |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, ranks in figures.items():
        for stats in ranks:
            cells = [stats[key] for key in ("parameter_bytes", "gradient_bytes", "gradient_limit_bytes")]
            cells += [stats["optimizer_state_bytes"], stats["optimizer_state_limit_bytes"]]
            rows.append(f"| {label} | {stats['rank']} | " + " | ".join(f"{cell:,}" for cell in cells) + " |")
    return (
        "## Sharded training memory per rank (bytes)\n\n"
        "Two gloo ranks on CPU, the tiny BERT of the tests (82 KB of fp32 parameters), recipe: head, then the top "
        "block; measured while gradients exist, in the last phase (27,420 trainable bytes in all). The limit is "
        "what the rank would hold if only trainable tensors had gradients and AdamW state (`hf_freeze.memory`). "
        "A mixed FSDP1 unit with `use_orig_params=True` allocates the gradient of its whole local shard; with "
        "`hf_freeze.fsdp1.trainable_wrap_policy` and flat parameters each rank holds its share of the trainable "
        "gradients only, as FSDP2 does.\n\n" + "\n".join(rows) + f"\n\nMachine: {machine()}. "
        "Command: `python benchmarks/fsdp_memory.py`.\n"
    )


def main() -> None:
    figures = measure()
    write_section("fsdp_memory", table(figures), figures)
    print(table(figures))


if __name__ == "__main__":
    main()
