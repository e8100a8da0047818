"""``hf-freeze plan``: explain what a recipe does to a model, built on the meta device.

``--lint fsdp1|fsdp2|deepspeed`` adds the findings of :func:`hf_freeze.lint.lint` (FSDP1 units from
``--fsdp1-wrap`` and ``--use-orig-params``) after the table, or under ``"lint"`` in ``--json``; the exit code
is 2 when any finding is an error, so a launch script can stop before the run.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from typing import Any

from torch import nn

from hf_freeze.fsdp1 import trainable_wrap_policy
from hf_freeze.lint import ENGINES, Finding, lint
from hf_freeze.modeling import TASK_CLASSES, build_empty_model, load_config
from hf_freeze.phases import phase_plans
from hf_freeze.recipe import Recipe


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``plan`` command."""
    parser = subparsers.add_parser("plan", help="dry-run a recipe on a model and explain every decision")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model folder or hub id (only its config is read)")
    source.add_argument("--config", metavar="CONFIG.json", help="plan from a bare config.json")
    parser.add_argument("--recipe", required=True, help="bundled recipe name or a .yaml/.json file")
    parser.add_argument("--task", choices=sorted(TASK_CLASSES), help="build this task's model class")
    parser.add_argument("--num-labels", type=int, help="labels of a classification head")
    parser.add_argument("--phase", type=int, default=0, help="plan this phase of a phased recipe")
    parser.add_argument("--explain", action="append", default=[], metavar="PARAM", help="explain one parameter")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    lint = parser.add_argument_group("lint", "check the recipe against a sharding engine before a run")
    lint.add_argument("--lint", choices=ENGINES, help="report what the recipe breaks on this engine; exit 2 on errors")
    lint.add_argument(
        "--fsdp1-wrap",
        choices=sorted(WRAP_POLICIES),
        default="transformer",
        help="fsdp1 units: transformer (Accelerate's default: each _no_split_modules block), trainable "
        "(hf_freeze.fsdp1.trainable_wrap_policy) or none (one unit); default: transformer",
    )
    lint.add_argument("--use-orig-params", action="store_true", help="fsdp1 with use_orig_params=True")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build the model without weights, plan the recipe, print the table or JSON."""
    overrides = {} if args.num_labels is None else {"num_labels": args.num_labels}
    config = load_config(model=args.model, config_file=args.config, **overrides)
    recipe = Recipe.load(args.recipe)
    recipe.rules_for_phase(args.phase)  # an unknown phase is reported before the model is built
    # Every phase is planned, as a training run would: a phase that does not fit the model is found now.
    planned = phase_plans(build_empty_model(config, task=args.task), recipe)[args.phase]
    explanations = [planned.explain(name) for name in args.explain]
    findings = _lint(args, config, recipe) if args.lint else []
    if args.json:
        data = planned.to_dict()
        if explanations:
            data["explain"] = explanations
        if args.lint:
            data["lint"] = {"engine": args.lint, "findings": [finding.__dict__ for finding in findings]}
        print(json.dumps(data, indent=2))
    else:
        print("\n".join([planned.summary(), *explanations]))
        if args.lint:
            print(f"\nLint ({args.lint}): " + ("no problems found." if not findings else f"{len(findings)} finding(s)"))
            print("\n".join(str(finding) for finding in findings))
    return 2 if any(finding.level == "error" for finding in findings) else 0


def _lint(args: argparse.Namespace, config: Any, recipe: Recipe) -> list[Finding]:
    """The linter's findings for ``--lint ENGINE``, on a fresh meta-device model (wrap policies keep its modules)."""
    model = build_empty_model(config, task=args.task)
    policy = WRAP_POLICIES[args.fsdp1_wrap](model, recipe) if args.lint == "fsdp1" else None
    return lint(model, recipe, args.lint, auto_wrap_policy=policy, use_orig_params=args.use_orig_params)


def _transformer_policy(model: nn.Module, recipe: Recipe) -> Any:
    """Accelerate's default FSDP1 policy: wrap every module whose class is in ``_no_split_modules``."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    names = set(getattr(model, "_no_split_modules", None) or ())
    classes = {type(module) for module in model.modules() if type(module).__name__ in names}
    return functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=classes)


WRAP_POLICIES: dict[str, Callable[[nn.Module, Recipe], Any]] = {
    "transformer": _transformer_policy,
    "trainable": trainable_wrap_policy,
    "none": lambda model, recipe: None,
}
