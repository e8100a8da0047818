"""``hf-freeze recipes``: list the bundled recipes, or print one."""

from __future__ import annotations

import argparse

from hf_freeze.recipe import Recipe, bundled_recipe_names, bundled_recipe_text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``recipes`` command."""
    parser = subparsers.add_parser("recipes", help="list the bundled recipes (or --show NAME)")
    parser.add_argument("--show", metavar="NAME", help="print the YAML of one bundled recipe")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print names and descriptions, or one recipe's YAML."""
    if args.show:
        Recipe.load(args.show)  # unknown names get the usual one-sentence RecipeError
        print(bundled_recipe_text(args.show), end="")
        return 0
    names = bundled_recipe_names()
    width = max(len(name) for name in names)
    for name in names:
        print(f"{name.ljust(width)}  {Recipe.load(name).description}")
    return 0
