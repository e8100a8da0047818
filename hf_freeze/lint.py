"""The plan linter: what a recipe will break on a sharding engine, said before the run starts.

``lint(model, recipe, engine)`` plans every phase of ``recipe`` on ``model`` (a real or a meta-device model:
only names, shapes and module structure are read) and returns findings, each an error (the run would fail
or silently train wrong) or a warning (it runs, at a cost). One sentence each: what, where, the fix.

- ``fsdp1``: with ``use_orig_params=False`` every unit must hold parameters that train together in every
  phase (FSDP1 refuses a mixed unit at wrap time without naming it, and cannot unfreeze part of a unit
  later); a module whose own weight and bias disagree can never be uniform. With ``use_orig_params=True``
  mixed units work but pay gradient memory for their frozen elements. Units come from
  :func:`hf_freeze.fsdp1.planned_units` for the auto-wrap policy that will be used.
- ``fsdp2``: mixed units are fine; a phase that unfreezes a unit after sharding needs the phase hook of
  :func:`hf_freeze.fsdp.apply_phase` (FreezeTrainer and FreezeController use it).
- ``deepspeed``: a parameter frozen when ``deepspeed.initialize`` ran never updates, without an error, so a
  phase that unfreezes after the engine exists is an error unless the engine is rebuilt at the phase change
  (:func:`deepspeed_findings`, kept small so the DeepSpeed integration can refine it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from hf_freeze.deepspeed import late_unfreeze_messages
from hf_freeze.fsdp1 import Unit, mixed_modules, parameter_keys, planned_units
from hf_freeze.names import canonical_name
from hf_freeze.phases import phase_plans
from hf_freeze.plan import Plan
from hf_freeze.recipe import Recipe

ENGINES = ("fsdp1", "fsdp2", "deepspeed")
TRAINABLE_POLICY_FIX = "wrap with hf_freeze.fsdp1.trainable_wrap_policy(model, recipe)"


@dataclass(frozen=True)
class Finding:
    """One problem the linter found: ``error`` (the run fails or trains wrong) or ``warning`` (it costs)."""

    level: Literal["error", "warning"]
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def lint(
    model: nn.Module,
    recipe: Recipe | dict | str,
    engine: str,
    *,
    auto_wrap_policy: Any = None,
    use_orig_params: bool = False,
    engine_rebuilt_per_phase: bool = False,
) -> list[Finding]:
    """Findings for training ``model`` under ``recipe`` with ``engine`` (``fsdp1``, ``fsdp2`` or ``deepspeed``).

    ``auto_wrap_policy`` and ``use_orig_params`` describe the FSDP1 wrapping (None: the whole model is one
    unit). ``engine_rebuilt_per_phase``: the DeepSpeed engine is rebuilt at each phase change.
    """
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}; lint knows {', '.join(ENGINES)}.")
    recipe = Recipe.coerce(recipe)
    plans = phase_plans(model, recipe)
    if engine == "fsdp1":
        return fsdp1_findings(model, recipe, planned_units(model, auto_wrap_policy), use_orig_params)
    if engine == "fsdp2":
        return fsdp2_findings(plans, recipe)
    return deepspeed_findings(plans, recipe, engine_rebuilt_per_phase=engine_rebuilt_per_phase)


def fsdp1_findings(model: nn.Module, recipe: Recipe, units: list[Unit], use_orig_params: bool) -> list[Finding]:
    """Mixed units under FSDP1: errors with ``use_orig_params=False``, gradient-memory warnings with True."""
    keys = parameter_keys(model, recipe)
    findings = []
    mixed = mixed_modules(model, keys)
    if mixed:
        name, own = next(iter(mixed.items()))
        more = f" (and {len(mixed) - 1} more modules like it)" if len(mixed) > 1 else ""
        cost = "its unit then pays gradient memory for the frozen ones"
        fix = f"use use_orig_params=True ({cost}) or FSDP2 (fully_shard)." if not use_orig_params else f"{cost}."
        findings.append(
            Finding(
                "warning" if use_orig_params else "error",
                f"Module '{name}'{more} holds parameters of its own that train differently ({_describe(own)}), so "
                f"no FSDP1 unit can hold them uniformly: {fix}",
            )
        )
    explained = {param for own in mixed.values() for param in own}
    sizes = _numels(model)
    for unit in units:
        unit_keys = {param: keys.get(param) for param in unit.params}
        if len(set(unit_keys.values())) < 2 or set(unit.params) <= explained:
            continue
        if not use_orig_params:
            findings.append(
                Finding(
                    "error",
                    f"The FSDP1 {unit.label} mixes parameters that train differently ({_describe(unit_keys)}); with "
                    "use_orig_params=False FSDP1 refuses it ('Must flatten tensors with uniform requires_grad') "
                    f"or cannot unfreeze part of it later: {TRAINABLE_POLICY_FIX}, or set use_orig_params=True.",
                )
            )
        elif None in unit_keys.values():
            frozen = sum(sizes.get(param, 0) for param, key in unit_keys.items() if key is None)
            findings.append(
                Finding(
                    "warning",
                    f"The FSDP1 {unit.label} mixes trainable and frozen parameters; with use_orig_params=True it "
                    f"allocates gradients for its {frozen:,} frozen elements too: {TRAINABLE_POLICY_FIX} "
                    "(then use_orig_params=False works).",
                )
            )
    return findings


def fsdp2_findings(plans: list[Plan], recipe: Recipe) -> list[Finding]:
    """FSDP2 handles mixed units; a later phase needs the phase hook that refreshes unit dtypes."""
    late = _first_unfrozen_later(plans)
    if not late:
        return []
    phase, name = late
    return [
        Finding(
            "warning",
            f"Phase {phase} of {recipe.name!r} unfreezes {name} after sharding: advance phases with FreezeTrainer, "
            "FreezeController or hf_freeze.fsdp.apply_phase (plain requires_grad_ leaves a unit that was frozen at "
            "its first forward without gradient dtypes, which fails under mixed precision).",
        )
    ]


def deepspeed_findings(plans: list[Plan], recipe: Recipe, *, engine_rebuilt_per_phase: bool = False) -> list[Finding]:
    """A phase that unfreezes after ``deepspeed.initialize`` is an error unless the engine is rebuilt then; the
    sentence is the one :func:`hf_freeze.deepspeed.check_phase_change` raises at that phase change."""
    if engine_rebuilt_per_phase:
        return []
    return [Finding("error", message) for message in late_unfreeze_messages(plans)]


def _first_unfrozen_later(plans: list[Plan]) -> tuple[int, str] | None:
    """The first phase after phase 0 that unfreezes something, with the first tensor it unfreezes."""
    for index in range(1, len(plans)):
        before = set(plans[index - 1].trainable)
        new = [name for name in plans[index].trainable if name not in before]
        if new:
            return index, new[0]
    return None


def _describe(keys: dict[str, int | None]) -> str:
    """'a trains from phase 0, b is frozen' for at most three parameters."""
    first: dict[int | None, str] = {}
    for name, key in keys.items():
        first.setdefault(key, f"{name} {'is frozen' if key is None else f'trains from phase {key}'}")
    return ", ".join(list(first.values())[:3])


def _numels(model: nn.Module) -> dict[str, int]:
    """Elements per canonical parameter name (aliases included)."""
    return {canonical_name(name): param.numel() for name, param in model.named_parameters(remove_duplicate=False)}
