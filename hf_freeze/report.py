"""Human-readable plan summaries (the table ``Plan.summary()`` and ``hf-freeze plan`` print)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hf_freeze.plan import Plan


def human_bytes(count: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """Aligned columns: the first ``text_columns`` left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [
            cell.ljust(width) if i < text_columns else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(header), "  ".join("-" * width for width in widths), *(line(row) for row in rows)]


def format_plan(plan: Plan) -> str:
    """The plan as a table per rule and per block, then totals, trainable % and optimizer state."""
    recipe = plan.recipe
    phases = f", phase {plan.phase} of {recipe.num_phases}" if recipe.phases else ""
    lines = [f"Plan: recipe {recipe.name!r} on {plan.model_class}{phases}", ""]
    rule_rows = [[r.label, r.description, f"{r.modules:,}", f"{r.parameters:,}", f"{r.elements:,}"] for r in plan.rules]
    undecided = plan.default_report()
    rule_rows.append(
        [
            f"default: {recipe.default}",
            "what no rule selects",
            "",
            f"{undecided['parameters']:,}",
            f"{undecided['elements']:,}",
        ]
    )
    lines += _table(["rule", "selects", "modules", "params", "elements"], rule_rows, text_columns=2)
    lines.append("")
    block_rows = [
        [block["name"], f"{block['trainable_elements']:,}", f"{block['frozen_elements']:,}"] for block in plan.blocks()
    ]
    lines += _table(["block", "trainable", "frozen"], block_rows)
    totals = plan.totals()
    lines += [
        "",
        f"Trainable: {totals['trainable_parameters']:,} of {totals['parameters']:,} tensors, "
        f"{totals['trainable_elements']:,} of {totals['elements']:,} elements ({totals['trainable_percent']:.2f}%)",
        f"AdamW state estimate: {human_bytes(plan.optimizer_state_bytes('adamw'))} "
        f"({plan.optimizer_state_bytes('adamw'):,} bytes)",
    ]
    lines += [f"Warning: {warning}" for warning in plan.warnings]
    return "\n".join(lines)
