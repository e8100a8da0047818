"""Progressive unfreezing: one plan per phase, and a controller that decides when the next phase starts.

Triggers (``until`` of a phase) count from the start of that phase: ``{step: 100}`` ends it 100 optimizer
steps after it began, ``{epoch: 1}`` one epoch after. ``{metric: eval_accuracy, above: 0.8}`` ends it at the
first evaluation whose metric passes the threshold; ``{plateau: {metric, patience}}`` after ``patience``
evaluations without improvement. Metric names are looked up as given, then with an ``eval_`` prefix.

The controller changes no optimizer and knows nothing of distributed training: ``advance()`` only sets
``requires_grad`` for the next phase. Integrations (the Trainer, the Accelerate helper) react to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from hf_freeze.apply import apply_plan
from hf_freeze.errors import RecipeError
from hf_freeze.plan import Plan, plan
from hf_freeze.recipe import Recipe, Trigger


def phase_plans(model: nn.Module, recipe: Recipe) -> list[Plan]:
    """The plan of every phase. Phases may only unfreeze: a tensor that trained keeps training."""
    plans = [plan(model, recipe, phase=index) for index in range(recipe.num_phases)]
    for index in range(1, len(plans)):
        refrozen = [name for name in plans[index - 1].trainable if not plans[index].decisions[name].trainable]
        if refrozen:
            raise RecipeError(
                f"{recipe.source}, phase {index} ({recipe.phases[index].name}): freezes {refrozen[0]}, which trained "
                "in the phase before; phases may only unfreeze."
            )
    return plans


def first_trainable_phase(plans: list[Plan]) -> dict[str, int]:
    """For every tensor that trains in some phase, the first phase in which it trains."""
    first: dict[str, int] = {}
    for index, planned in enumerate(plans):
        for name in planned.trainable:
            first.setdefault(name, index)
    return first


@dataclass
class PhaseState:
    """Where a run stands in its recipe's phases (saved in checkpoints)."""

    phase: int = 0
    start_step: int = 0
    start_epoch: float = 0.0
    best: float | None = None
    bad_evaluations: int = 0


class PhaseController:
    """Tracks the current phase and switches ``requires_grad`` when a phase's trigger fires."""

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        plans: list[Plan] | None = None,
        apply: Callable[[nn.Module, Plan], Plan] = apply_plan,
    ):
        self.model = model
        self.recipe = recipe
        self.plans = plans if plans is not None else phase_plans(model, recipe)
        self.state = PhaseState()
        self.apply = apply  # sets a phase's flags; sharded models need their engine's (hf_freeze.fsdp.apply_phase)

    @property
    def phase(self) -> int:
        """The index of the current phase."""
        return self.state.phase

    @property
    def plan(self) -> Plan:
        """The plan of the current phase."""
        return self.plans[self.state.phase]

    @property
    def is_last(self) -> bool:
        """Whether no later phase remains."""
        return self.state.phase >= len(self.plans) - 1

    def should_advance(self, step: int, epoch: float, metrics: dict[str, float] | None = None) -> bool:
        """Whether the current phase's trigger fires at this step/epoch, or for these evaluation metrics.

        Call with ``metrics`` once per evaluation (plateau counts evaluations) and without them after
        optimizer steps.
        """
        if self.is_last:
            return False
        trigger = self.recipe.phases[self.state.phase].until
        assert trigger is not None  # validated: every phase but the last has one
        if trigger.kind == "step":
            return step - self.state.start_step >= trigger.value
        if trigger.kind == "epoch":
            return epoch - self.state.start_epoch >= trigger.value - 1e-9
        if metrics is None:
            return False
        value = _metric(metrics, trigger.metric)
        if value is None:
            return False
        if trigger.kind == "above":
            return value > trigger.value
        if trigger.kind == "below":
            return value < trigger.value
        return self._plateaued(trigger, value)

    def _plateaued(self, trigger: Trigger, value: float) -> bool:
        sign = 1.0 if trigger.mode == "max" else -1.0
        if self.state.best is None or sign * (value - self.state.best) > trigger.min_delta:
            self.state.best = value
            self.state.bad_evaluations = 0
            return False
        self.state.bad_evaluations += 1
        return self.state.bad_evaluations >= trigger.patience

    def advance(self, step: int, epoch: float) -> Plan:
        """Enter the next phase: set its ``requires_grad`` flags and return its plan."""
        if self.is_last:
            raise RuntimeError("advance() called in the last phase")
        self.state = PhaseState(phase=self.state.phase + 1, start_step=step, start_epoch=epoch)
        return self.apply(self.model, self.plan)

    def event(self) -> dict[str, Any]:
        """A log record of the current phase: its index, name and trainable counts."""
        totals = self.plan.totals()
        return {
            "hf_freeze/phase": self.state.phase,
            "hf_freeze/phase_name": self.phase_name,
            "hf_freeze/trainable_parameters": totals["trainable_parameters"],
            "hf_freeze/trainable_elements": totals["trainable_elements"],
        }

    @property
    def phase_name(self) -> str:
        """The current phase's name (``main`` for a recipe without phases)."""
        return self.recipe.phases[self.state.phase].name if self.recipe.phases else "main"

    def state_dict(self) -> dict[str, Any]:
        """The controller's state, JSON-able."""
        return dict(self.state.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> Plan:
        """Restore a saved state and set the flags of its phase; returns that phase's plan."""
        phase = state.get("phase")
        if not isinstance(phase, int) or not 0 <= phase < len(self.plans):
            raise RecipeError(f"Saved phase {phase!r} does not exist in recipe {self.recipe.name!r}.")
        self.state = PhaseState(**state)
        return self.apply(self.model, self.plan)


def _metric(metrics: dict[str, float], name: str | None) -> float | None:
    for key in (name, f"eval_{name}"):
        value = metrics.get(key) if key else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None
