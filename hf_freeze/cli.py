"""The ``hf-freeze`` command. User mistakes end in one sentence on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import sys

from hf_freeze.errors import DeltaError, RecipeError, UsageError
from hf_freeze.version import __version__

COMMAND_MODULES = ("hf_freeze.commands.recipes", "hf_freeze.commands.plan", "hf_freeze.commands.delta")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (argparse prints the usage block too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help').\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser with every sub-command registered."""
    parser = _Parser(prog="hf-freeze", description="Freeze parts of Hugging Face models by recipe.")
    parser.add_argument("--version", action="version", version=f"hf-freeze {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (RecipeError, DeltaError, UsageError) as error:
        print(f"hf-freeze: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
