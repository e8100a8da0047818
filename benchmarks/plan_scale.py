"""Planning at scale: meta-device construction and ``plan()`` time for a 70B dense and a 235B MoE model.

Builds a Llama-3-70B-shaped and a Qwen3-MoE-235B-A22B-shaped model on the meta device (shapes only, no
memory) from their published config shapes, then times ``plan()`` for a few bundled recipes. Each figure is
the median of ``--repeats`` runs. Goal: planning itself under 1 s per model and recipe. ``--profile`` prints
where plan() spends its time (cProfile, top functions by cumulative time).

    python benchmarks/plan_scale.py [--repeats 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import transformers
from results import machine, write_section
from torch import nn

from hf_freeze import plan

T = TypeVar("T")
GOAL_S = 1.0
RECIPES = ("freeze_dense_kernels", "train_top_blocks", "train_head_only")
SHAPES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "Llama-3-70B": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            hidden_size=8192,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            intermediate_size=28672,
            vocab_size=128256,
            max_position_embeddings=8192,
            rope_theta=500000.0,
            tie_word_embeddings=False,
        ),
    ),
    "Qwen3-MoE-235B-A22B": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            hidden_size=4096,
            num_hidden_layers=94,
            num_attention_heads=64,
            num_key_value_heads=4,
            head_dim=128,
            intermediate_size=12288,
            moe_intermediate_size=1536,
            num_experts=128,
            num_experts_per_tok=8,
            vocab_size=151936,
            max_position_embeddings=40960,
            tie_word_embeddings=False,
        ),
    ),
}


def build(shape: str) -> nn.Module:
    """The model of ``shape`` on the meta device."""
    config_class, model_class, kwargs = SHAPES[shape]
    config = getattr(transformers, config_class)(**kwargs)
    with torch.device("meta"):
        return getattr(transformers, model_class)(config)


def timed(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Median wall time of ``repeats`` calls of ``fn`` (garbage collected between calls) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result  # type: ignore[return-value]


def profile(model: nn.Module, recipe: str, top: int = 15) -> str:
    """cProfile of one ``plan(model, recipe)``: the top functions by cumulative time."""
    profiler = cProfile.Profile()
    profiler.runcall(plan, model, recipe)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def measure(repeats: int, show_profile: bool) -> dict[str, Any]:
    """Construction and plan times for every shape and recipe."""
    results: dict[str, Any] = {"repeats": repeats, "goal_s": GOAL_S, "machine": machine(), "models": {}}
    build("Llama-3-70B")  # warm-up: the first construction also imports and initialises modeling code
    for shape in SHAPES:
        build_s, model = timed(lambda shape=shape: build(shape), repeats)
        entry: dict[str, Any] = {
            "model_class": type(model).__name__,
            "parameters": sum(param.numel() for param in model.parameters()),
            "tensors": sum(1 for _ in model.parameters()),
            "build_s": round(build_s, 4),
            "plans": {},
        }
        for recipe in RECIPES:
            plan_s, planned = timed(lambda model=model, recipe=recipe: plan(model, recipe), repeats)
            report_s, _ = timed(lambda planned=planned: (planned.summary(), planned.to_dict()), repeats)
            totals = planned.totals()
            entry["plans"][recipe] = {
                "plan_s": round(plan_s, 4),
                "report_s": round(report_s, 4),
                "trainable_tensors": totals["trainable_parameters"],
                "trainable_elements": totals["trainable_elements"],
                "trainable_percent": totals["trainable_percent"],
            }
            if show_profile or plan_s > GOAL_S:
                print(f"--- {shape}, {recipe}: plan {plan_s:.3f} s\n{profile(model, recipe)}", file=sys.stderr)
        results["models"][shape] = entry
        del model
    return results


HEADER = ("model", "parameters", "tensors", "build (s)", "recipe", "plan (s)", "report (s)", "trainable tensors", "%")


def table_row(cells: list[str] | tuple[str, ...]) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def markdown(results: dict[str, Any], command: str) -> str:
    """The results.md section."""
    lines = [
        "## Planning at scale (meta device)",
        "",
        f"Llama-3-70B and Qwen3-MoE-235B-A22B shapes built on the meta device; median of {results['repeats']} runs. "
        "`plan` is `plan(model, recipe)`; `report` is `summary()` + `to_dict()` of that plan; % is the trainable "
        f"share of elements. Goal: plan < {results['goal_s']:.0f} s. Measured on {results['machine']} with "
        f"`{command}`.",
        "",
        table_row(HEADER),
        table_row(["---"] * len(HEADER)),
    ]
    for shape, entry in results["models"].items():
        model_cells = [shape, f"{entry['parameters'] / 1e9:.2f} B", f"{entry['tensors']:,}", f"{entry['build_s']:.2f}"]
        for recipe, figures in entry["plans"].items():
            lines.append(
                table_row(
                    [
                        *model_cells,
                        recipe,
                        f"{figures['plan_s']:.3f}",
                        f"{figures['report_s']:.3f}",
                        f"{figures['trainable_tensors']:,}",
                        f"{figures['trainable_percent']:.2f}",
                    ]
                )
            )
            model_cells = ["", "", "", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure, print the table, and write results.md's plan_scale section and plan_scale.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (the median is reported)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of every plan() to stderr")
    args = parser.parse_args(argv)
    results = measure(args.repeats, args.profile)
    command = "python benchmarks/plan_scale.py" + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
    text = markdown(results, command)
    print(text)
    write_section("plan_scale", text, results)


if __name__ == "__main__":
    main()
