"""Plan: recipe × model → one decision per tensor. Pure: the model is never touched.

Rules act on tensors. A tensor reachable under several names (tied weights) is decided by the last rule that
selects any of its names; any rule beats ``default``. Every decision records the rule and the alias through
which it was reached, so ``explain()`` can say why a tensor trains or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hf_freeze.errors import RecipeError
from hf_freeze.kinds import has_kind
from hf_freeze.names import canonical_name
from hf_freeze.recipe import Recipe, Rule
from hf_freeze.selectors import Anatomy, parse_selector

OPTIMIZER_STATE_COPIES = {"adamw": 2, "adam": 2, "sgd": 1}


@dataclass(frozen=True)
class Decision:
    """The plan's verdict on one tensor."""

    name: str
    trainable: bool
    rule: str | None
    via: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    numel: int
    nbytes: int
    group: str


@dataclass(frozen=True)
class RuleReport:
    """What one rule selected."""

    label: str
    description: str
    trainable: bool
    modules: int
    parameters: int
    elements: int


@dataclass
class Plan:
    """Decisions for every tensor of a model under a recipe (at one phase)."""

    model_class: str
    recipe: Recipe
    phase: int
    decisions: dict[str, Decision]
    rules: list[RuleReport]
    warnings: list[str] = field(default_factory=list)
    _tensors: dict[str, nn.Parameter] = field(default_factory=dict, repr=False)
    _alias_index: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def trainable(self) -> list[str]:
        """Canonical names of the tensors that train."""
        return [name for name, decision in self.decisions.items() if decision.trainable]

    @property
    def frozen(self) -> list[str]:
        """Canonical names of the tensors that stay frozen."""
        return [name for name, decision in self.decisions.items() if not decision.trainable]

    def tensors(self) -> dict[str, nn.Parameter]:
        """The planned tensors by canonical name (each tied tensor once)."""
        return dict(self._tensors)

    def decision(self, name: str) -> Decision:
        """The decision for ``name`` (canonical, wrapped or a tied alias)."""
        canonical = canonical_name(name)
        if canonical not in self._alias_index:
            raise KeyError(f"{name!r} is not a parameter of {self.model_class}.")
        return self.decisions[self._alias_index[canonical]]

    def explain(self, name: str) -> str:
        """One sentence saying which rule decided ``name`` and how."""
        decision = self.decision(name)
        state = "trainable" if decision.trainable else "frozen"
        subject = canonical_name(name)
        if decision.rule is None:
            how = {"keep": "kept as it was"}.get(self.recipe.default, state)
            return f"{subject}: {state} by default ({how}; no rule of {self.recipe.name!r} selects it)."
        report = next(report for report in self.rules if report.label == decision.rule)
        via = "" if decision.via == subject else f" through its tied alias {decision.via}"
        return f"{subject}: {state} by {decision.rule} ({report.description}){via}."

    def optimizer_state_bytes(self, optimizer: str = "adamw") -> int:
        """Estimated optimizer state for what trains: AdamW keeps two tensors per parameter, SGD one."""
        if optimizer.lower() not in OPTIMIZER_STATE_COPIES:
            raise ValueError(f"No state estimate for {optimizer!r}; known: {', '.join(OPTIMIZER_STATE_COPIES)}.")
        copies = OPTIMIZER_STATE_COPIES[optimizer.lower()]
        return copies * sum(d.nbytes for d in self.decisions.values() if d.trainable)

    def totals(self) -> dict[str, Any]:
        """Counts of tensors and elements, trainable and frozen."""
        trainable = [d for d in self.decisions.values() if d.trainable]
        elements = sum(d.numel for d in self.decisions.values())
        trainable_elements = sum(d.numel for d in trainable)
        return {
            "parameters": len(self.decisions),
            "trainable_parameters": len(trainable),
            "frozen_parameters": len(self.decisions) - len(trainable),
            "elements": elements,
            "trainable_elements": trainable_elements,
            "frozen_elements": elements - trainable_elements,
            "trainable_percent": round(100.0 * trainable_elements / elements, 4) if elements else 0.0,
        }

    def blocks(self) -> list[dict[str, Any]]:
        """Trainable and frozen elements per block (or top-level part) in model order."""
        groups: dict[str, dict[str, Any]] = {}
        for decision in self.decisions.values():
            entry = groups.setdefault(
                decision.group, {"name": decision.group, "trainable_elements": 0, "frozen_elements": 0}
            )
            entry["trainable_elements" if decision.trainable else "frozen_elements"] += decision.numel
        return list(groups.values())

    def default_report(self) -> dict[str, int]:
        """How many tensors and elements no rule decided (left to ``default``)."""
        undecided = [d for d in self.decisions.values() if d.rule is None]
        return {"parameters": len(undecided), "elements": sum(d.numel for d in undecided)}

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-able data with stable keys."""
        return {
            "model_class": self.model_class,
            "recipe": self.recipe.name,
            "phase": self.phase,
            "default": {"policy": self.recipe.default, **self.default_report()},
            "rules": [report.__dict__.copy() for report in self.rules],
            "blocks": self.blocks(),
            "totals": self.totals(),
            "optimizer_state_bytes": {"adamw": self.optimizer_state_bytes("adamw")},
            "warnings": list(self.warnings),
            "parameters": {
                name: {
                    "trainable": d.trainable,
                    "rule": d.rule,
                    "via": d.via,
                    "aliases": list(d.aliases),
                    "shape": list(d.shape),
                    "dtype": d.dtype,
                    "elements": d.numel,
                }
                for name, d in self.decisions.items()
            },
        }

    def summary(self) -> str:
        """A human-readable table: per rule, per block, totals, trainable % and the AdamW state estimate."""
        from hf_freeze.report import format_plan  # formatting lives apart from the decisions

        return format_plan(self)


def plan(model: nn.Module, recipe: Recipe | dict[str, Any] | str, phase: int = 0) -> Plan:
    """Decide, for every tensor of ``model``, whether it trains under ``recipe`` at ``phase``.

    Pure: flags are not changed. Raises ``RecipeError`` (naming the rule) when a rule selects nothing or a
    selector does not apply to the model.
    """
    recipe = Recipe.coerce(recipe)
    rules = recipe.rules_for_phase(phase)
    anatomy = Anatomy(model)
    modules = _walk(model, anatomy)
    tensors = _tensor_table(modules)
    decided: dict[int, tuple[Rule, list[str]]] = {}
    reports = []
    for rule in rules:
        chosen = _select(rule, modules, anatomy)
        if not chosen and not rule.optional:
            raise RecipeError(
                f"{rule.label}: selects no parameter of {anatomy.model_class} ({rule.describe()}); "
                "fix the rule or mark it 'optional: true'."
            )
        decided.update((key, (rule, aliases)) for key, aliases in chosen.items())
        reports.append(
            RuleReport(
                label=rule.label,
                description=rule.describe(),
                trainable=rule.trainable,
                modules=len({alias.rpartition(".")[0] for aliases in chosen.values() for alias in aliases}),
                parameters=len(chosen),
                elements=sum(tensors[key]["param"].numel() for key in chosen),
            )
        )
    plan_ = Plan(model_class=anatomy.model_class, recipe=recipe, phase=phase, decisions={}, rules=reports)
    for key, record in tensors.items():
        _decide(plan_, record, decided.get(key))
    if not plan_.trainable:
        plan_.warnings.append(f"Nothing trains: every tensor of {anatomy.model_class} is frozen.")
    return plan_


def _decide(plan_: Plan, record: dict[str, Any], verdict: tuple[Rule, list[str]] | None) -> None:
    """Record the decision for one tensor, warning about changes made through a tied alias."""
    param, name = record["param"], record["name"]
    if verdict is None:
        trainable = {"trainable": True, "frozen": False}.get(plan_.recipe.default, param.requires_grad)
        label, via = None, name
    else:
        rule, aliases = verdict
        trainable, label, via = rule.trainable, rule.label, aliases[0]
        others = [alias for alias in record["aliases"] if alias not in aliases]
        if others:
            state = "trainable" if trainable else "frozen"
            plan_.warnings.append(f"{label} made {', '.join(others)} {state} through its tied alias {via}.")
    if trainable and not (param.is_floating_point() or param.is_complex()):
        if label is not None:
            raise RecipeError(f"{label}: {name} has dtype {param.dtype} and cannot train; mark it frozen.")
        trainable = False
        plan_.warnings.append(f"{name} has dtype {param.dtype} and cannot train; it stays frozen.")
    plan_.decisions[name] = Decision(
        name=name,
        trainable=trainable,
        rule=label,
        via=via,
        aliases=tuple(record["aliases"]),
        shape=tuple(param.shape),
        dtype=str(param.dtype).removeprefix("torch."),
        numel=param.numel(),
        nbytes=param.numel() * param.element_size(),
        group=record["group"],
    )
    plan_._tensors[name] = param
    plan_._alias_index.update((alias, name) for alias in record["aliases"])


def _walk(model: nn.Module, anatomy: Anatomy) -> list[dict[str, Any]]:
    """Every module path (aliases included) with its canonical name, ancestry and report group."""
    block_ids = {id(block) for stack in anatomy.all_stacks() for block in stack}
    base_prefix = ""
    if anatomy.is_transformers and anatomy.base is not anatomy.model:
        base_prefix = next((canonical_name(name) for name, m in model.named_modules() if m is anatomy.base), "")
    entries: list[dict[str, Any]] = []
    by_path: dict[str, dict[str, Any]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        parent = by_path.get(path.rpartition(".")[0]) if path else None
        name = canonical_name(path)
        entry = {
            "path": path,
            "name": name,
            "module": module,
            "parent": parent,
            "group": name if id(module) in block_ids else (parent["group"] if parent else None),
        }
        if entry["group"] is None and name and name != base_prefix:  # the body itself is not a block
            depth = base_prefix.count(".") + 2 if base_prefix and name.startswith(base_prefix + ".") else 1
            entry["group"] = ".".join(name.split(".")[:depth]) if name.count(".") + 1 >= depth else None
        by_path[path] = entry
        entries.append(entry)
    return entries


def _tensor_table(modules: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """One record per tensor: its parameter, primary name, aliases and report group."""
    table: dict[int, dict[str, Any]] = {}
    for entry in modules:
        for local, param in entry["module"]._parameters.items():
            if param is None:
                continue
            name = f"{entry['name']}.{local}" if entry["name"] else local
            record = table.setdefault(
                id(param),
                {"param": param, "name": name, "aliases": [], "group": entry["group"] or name},
            )
            if name not in record["aliases"]:
                record["aliases"].append(name)
    return table


def _select(rule: Rule, modules: list[dict[str, Any]], anatomy: Anatomy) -> dict[int, list[str]]:
    """The tensors a rule selects (by ``id``), each with the aliases through which it selected them."""
    roots: set[int] = set()
    for text in rule.select:
        selector = parse_selector(text)
        try:
            roots.update(id(module) for module in anatomy.resolve(selector))
        except RecipeError as error:
            if not rule.optional:  # an optional rule whose selector does not apply selects nothing
                raise RecipeError(f"{rule.label}: {error}") from None
    inside: dict[str, bool] = {}
    matched: dict[str, bool] = {}
    selected: dict[int, list[str]] = {}
    for entry in modules:
        parent = entry["parent"]
        path, name, module = entry["path"], entry["name"], entry["module"]
        inside[path] = id(module) in roots or (parent is not None and inside[parent["path"]])
        matched[path] = any(p.fullmatch(name) for p in rule.match) or (parent is not None and matched[parent["path"]])
        if (rule.select and not inside[path]) or (rule.match and not matched[path]):
            continue
        if not has_kind(module, rule.kinds):
            continue
        for local, param in module._parameters.items():
            if param is not None and ("all" in rule.params or local in rule.params):
                selected.setdefault(id(param), []).append(f"{name}.{local}" if name else local)
    return selected
