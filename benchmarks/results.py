"""Shared by the benchmark scripts: write one section of ``benchmarks/results.md`` and its JSON."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).with_name("results.md")


def machine() -> str:
    """One line describing where the figures were measured."""
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def write_section(name: str, markdown: str, data: Any | None = None) -> None:
    """Replace (or append) the ``name`` section of results.md; also write ``<name>.json`` when ``data`` is given.

    A section lives between ``<!-- name:start -->`` and ``<!-- name:end -->`` so scripts never touch each
    other's figures.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    RESULTS.write_text(text, encoding="utf-8")
    if data is not None:
        Path(__file__).with_name(f"{name}.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
