"""``hf-freeze plan``: explain what a recipe does to a model, built on the meta device."""

from __future__ import annotations

import argparse
import json

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
    if args.json:
        data = planned.to_dict()
        if explanations:
            data["explain"] = explanations
        print(json.dumps(data, indent=2))
    else:
        print("\n".join([planned.summary(), *explanations]))
    return 0
