"""Recipe language v1: parse and validate recipes from YAML, JSON or a dict.

Nothing here looks at a model. Everything a recipe can get wrong on its own (unknown keys, wrong types, bad
regexes, unknown selectors, empty lists, bad phase triggers, ``extends`` cycles) is a ``RecipeError`` naming
the recipe and the rule, raised before any model is touched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hf_freeze.errors import RecipeError
from hf_freeze.selectors import parse_selector

DEFAULTS = ("trainable", "frozen", "keep")
KINDS = ("dense", "embedding", "norm", "conv", "any")
PARAM_ALIASES = {"kernel": "weight"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RULE_KEYS = {"match", "select", "kinds", "params", "trainable", "optional"}
_RECIPE_KEYS = {"name", "description", "extends", "default", "rules", "phases", "eval_frozen"}
_PHASE_KEYS = {"name", "rules", "until", "lr_scale"}
_TRIGGER_KEYS = {"step", "epoch", "metric", "above", "below", "plateau"}
_PLATEAU_KEYS = {"metric", "patience", "mode", "min_delta"}


@dataclass(frozen=True)
class Rule:
    """One rule: which modules and parameters it selects, and whether they train."""

    trainable: bool
    match: tuple[re.Pattern[str], ...] = ()
    select: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ("any",)
    params: tuple[str, ...] = ("all",)
    optional: bool = False
    label: str = "rule"

    def to_dict(self) -> dict[str, Any]:
        """The rule as recipe data (what ``Recipe.from_dict`` reads back)."""
        out: dict[str, Any] = {}
        if self.match:
            out["match"] = [pattern.pattern for pattern in self.match]
        if self.select:
            out["select"] = list(self.select)
        out["kinds"] = list(self.kinds)
        out["params"] = list(self.params)
        out["trainable"] = self.trainable
        if self.optional:
            out["optional"] = True
        return out

    def describe(self) -> str:
        """A short human description, e.g. ``select @encoder, dense kernel -> frozen``."""
        parts = [f"select {', '.join(self.select)}"] if self.select else []
        if self.match:
            parts.append(f"match {', '.join(pattern.pattern for pattern in self.match)}")
        if not parts:
            parts.append("all modules")
        if self.kinds != ("any",):
            parts.append("kinds " + ",".join(self.kinds))
        if self.params != ("all",):
            parts.append("params " + ",".join(self.params))
        return f"{'; '.join(parts)} -> {'trainable' if self.trainable else 'frozen'}"


@dataclass(frozen=True)
class Trigger:
    """When a phase ends: ``kind`` is step | epoch | above | below | plateau."""

    kind: str
    value: float = 0.0
    metric: str | None = None
    patience: int = 0
    mode: str = "min"
    min_delta: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The trigger as recipe data."""
        if self.kind in ("step", "epoch"):
            return {self.kind: self.value}
        if self.kind in ("above", "below"):
            return {"metric": self.metric, self.kind: self.value}
        return {
            "plateau": {
                "metric": self.metric,
                "patience": self.patience,
                "mode": self.mode,
                "min_delta": self.min_delta,
            }
        }


@dataclass(frozen=True)
class Phase:
    """A stage of progressive unfreezing: rules added on top of earlier phases, and when it ends."""

    name: str
    rules: tuple[Rule, ...] = ()
    until: Trigger | None = None
    lr_scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """The phase as recipe data."""
        out: dict[str, Any] = {"name": self.name, "rules": [rule.to_dict() for rule in self.rules]}
        if self.until is not None:
            out["until"] = self.until.to_dict()
        out["lr_scale"] = self.lr_scale
        return out


@dataclass(frozen=True)
class Recipe:
    """A validated recipe with ``extends`` resolved: inherited rules come first."""

    name: str
    rules: tuple[Rule, ...]
    description: str = ""
    default: str = "trainable"
    phases: tuple[Phase, ...] = ()
    eval_frozen: bool = False
    source: str = "<dict>"
    extends: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def load(cls, name_or_path: str | Path) -> Recipe:
        """Load a bundled recipe by name, or a ``.yaml``/``.yml``/``.json`` recipe file by path."""
        return _load(str(name_or_path), chain=())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Recipe:
        """Build and validate a recipe from plain data (``extends`` names bundled recipes or paths)."""
        return _from_data(data, source=source, base_dir=Path.cwd(), chain=())

    @classmethod
    def from_yaml(cls, text: str, source: str = "<yaml>") -> Recipe:
        """Parse YAML text with a safe loader and validate it."""
        return _from_data(_parse_text(text, "yaml", source), source=source, base_dir=Path.cwd(), chain=())

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> Recipe:
        """Parse JSON text and validate it."""
        return _from_data(_parse_text(text, "json", source), source=source, base_dir=Path.cwd(), chain=())

    @classmethod
    def coerce(cls, recipe: Recipe | dict[str, Any] | str | Path) -> Recipe:
        """Accept a ``Recipe``, a dict, a bundled name or a path."""
        if isinstance(recipe, Recipe):
            return recipe
        if isinstance(recipe, dict):
            return cls.from_dict(recipe)
        if isinstance(recipe, (str, Path)):
            return cls.load(recipe)
        raise RecipeError(f"A recipe must be a Recipe, a dict, a bundled name or a path, not {type(recipe).__name__}.")

    def rules_for_phase(self, phase: int) -> tuple[Rule, ...]:
        """The rules in force during ``phase``: the top-level rules, then those of phases 0..phase."""
        if phase < 0 or (phase > 0 and phase >= len(self.phases)):
            raise RecipeError(f"Recipe {self.name!r} has no phase {phase} (it has {max(1, len(self.phases))}).")
        rules = list(self.rules)
        for stage in self.phases[: phase + 1]:
            rules.extend(stage.rules)
        return tuple(rules)

    @property
    def num_phases(self) -> int:
        """How many phases the recipe runs through (1 when it has no ``phases``)."""
        return max(1, len(self.phases))

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as data: ``extends`` flattened, every default spelled out."""
        return {
            "name": self.name,
            "description": self.description,
            "default": self.default,
            "eval_frozen": self.eval_frozen,
            "rules": [rule.to_dict() for rule in self.rules],
            "phases": [phase.to_dict() for phase in self.phases],
        }


def bundled_recipe_names() -> list[str]:
    """Names of the recipes shipped with the package."""
    folder = resources.files("hf_freeze.recipes")
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def bundled_recipe_text(name: str) -> str:
    """The YAML text of a bundled recipe."""
    return resources.files("hf_freeze.recipes").joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def _load(name_or_path: str, chain: tuple[str, ...], base_dir: Path | None = None, referrer: str = "") -> Recipe:
    """Load by name or path; ``referrer`` is the recipe whose ``extends`` asked for it (named in errors)."""
    where = f"{referrer}: 'extends': " if referrer else ""
    path = Path(name_or_path)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    looks_like_file = path.suffix in (".yaml", ".yml", ".json") or "/" in name_or_path or "\\" in name_or_path
    if looks_like_file:
        if not path.is_file():
            raise RecipeError(f"{where}recipe file {str(path)!r} does not exist.")
        text = path.read_text(encoding="utf-8")
        data = _parse_text(text, "json" if path.suffix == ".json" else "yaml", str(path))
        return _from_data(data, source=str(path), base_dir=path.parent, chain=chain)
    if name_or_path not in bundled_recipe_names():
        names = ", ".join(bundled_recipe_names())
        raise RecipeError(f"{where}unknown recipe {name_or_path!r}; give a .yaml/.json path or one of {names}.")
    data = _parse_text(bundled_recipe_text(name_or_path), "yaml", name_or_path)
    return _from_data(data, source=name_or_path, base_dir=None, chain=chain)


def _parse_text(text: str, fmt: str, source: str) -> Any:
    try:
        return json.loads(text) if fmt == "json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RecipeError(f"{source}: not valid {fmt.upper()} ({first_line}).") from None


def _from_data(data: Any, source: str, base_dir: Path | None, chain: tuple[str, ...]) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping with 'rules', not {type(data).__name__}.")
    _check_keys(data, _RECIPE_KEYS, f"{source}")
    default_name = "recipe" if source.startswith("<") else Path(source).stem
    name = _typed(data.get("name", default_name), str, source, "name")
    if source in chain:
        raise RecipeError(f"{source}: 'extends' forms a cycle ({' -> '.join((*chain, source))}).")
    parent: Recipe | None = None
    extends = data.get("extends")
    if extends is not None:
        _typed(extends, str, source, "extends")
        parent = _load(extends, chain=(*chain, source), base_dir=base_dir, referrer=source)
    raw_rules = data.get("rules", [] if parent is not None else None)
    if raw_rules is None:
        raise RecipeError(f"{source}: the recipe has no 'rules'; add at least one rule.")
    if not isinstance(raw_rules, list):
        raise RecipeError(f"{source}: 'rules' must be a list of rules, not {type(raw_rules).__name__}.")
    if not raw_rules and parent is None:
        raise RecipeError(f"{source}: 'rules' is empty; add at least one rule.")
    rules = tuple(_parse_rule(raw, f"{source}, rule {index}") for index, raw in enumerate(raw_rules, start=1))
    default = _typed(data.get("default", parent.default if parent else "trainable"), str, source, "default")
    if default not in DEFAULTS:
        raise RecipeError(f"{source}: 'default' must be one of {', '.join(DEFAULTS)}, not {default!r}.")
    raw_phases = data.get("phases", None)
    phases = _parse_phases(raw_phases, source) if raw_phases is not None else (parent.phases if parent else ())
    eval_frozen = _typed(data.get("eval_frozen", parent.eval_frozen if parent else False), bool, source, "eval_frozen")
    return Recipe(
        name=name,
        description=_typed(data.get("description", parent.description if parent else ""), str, source, "description"),
        rules=(parent.rules if parent else ()) + rules,
        default=default,
        phases=phases,
        eval_frozen=eval_frozen,
        source=source,
        extends=((*parent.extends, parent.source) if parent else ()),
    )


def _check_keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r}; allowed keys are {', '.join(sorted(allowed))}.")


def _typed(value: Any, kind: type, where: str, key: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise RecipeError(f"{where}: {key!r} must be {kind.__name__}, not {type(value).__name__} ({value!r}).")
    return value


def _string_list(value: Any, where: str, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise RecipeError(f"{where}: {key!r} must be a string or a list of strings, not {value!r}.")
    if not items:
        raise RecipeError(f"{where}: {key!r} is an empty list; give at least one entry or drop the key.")
    return tuple(items)


def _parse_rule(raw: Any, where: str, phase: str | None = None) -> Rule:
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: a rule must be a mapping, not {type(raw).__name__} ({raw!r}).")
    _check_keys(raw, _RULE_KEYS, where)
    if "trainable" not in raw:
        raise RecipeError(f"{where}: the rule has no 'trainable'; say 'trainable: true' or 'trainable: false'.")
    trainable = _typed(raw["trainable"], bool, where, "trainable")
    patterns = []
    for pattern in _string_list(raw["match"], where, "match") if "match" in raw else ():
        try:
            patterns.append(re.compile(pattern))
        except re.error as error:
            raise RecipeError(f"{where}: 'match' regex {pattern!r} is invalid ({error}).") from None
    select = _string_list(raw["select"], where, "select") if "select" in raw else ()
    for selector in select:
        try:
            parse_selector(selector)
        except RecipeError as error:
            raise RecipeError(f"{where}: {error}") from None
    kinds = _string_list(raw.get("kinds", "any"), where, "kinds")
    for kind in kinds:
        if kind not in KINDS:
            raise RecipeError(f"{where}: unknown kind {kind!r}; kinds are {', '.join(KINDS)}.")
    params = []
    for param in _string_list(raw.get("params", "all"), where, "params"):
        if not _IDENTIFIER.fullmatch(param):
            raise RecipeError(f"{where}: {param!r} in 'params' is not a parameter name.")
        params.append(PARAM_ALIASES.get(param, param))
    optional = _typed(raw.get("optional", False), bool, where, "optional")
    return Rule(
        trainable=trainable,
        match=tuple(patterns),
        select=select,
        kinds=kinds,
        params=tuple(dict.fromkeys(params)),
        optional=optional,
        label=where,
    )


def _parse_phases(raw: Any, source: str) -> tuple[Phase, ...]:
    if not isinstance(raw, list):
        raise RecipeError(f"{source}: 'phases' must be a list of phases, not {type(raw).__name__}.")
    if len(raw) == 1:
        raise RecipeError(f"{source}: 'phases' has a single phase; progressive unfreezing needs two or more.")
    phases = []
    names: set[str] = set()
    for index, entry in enumerate(raw):
        where = f"{source}, phase {index}"
        if not isinstance(entry, dict):
            raise RecipeError(f"{where}: a phase must be a mapping, not {type(entry).__name__}.")
        _check_keys(entry, _PHASE_KEYS, where)
        name = _typed(entry.get("name", f"phase{index}"), str, where, "name")
        if name in names:
            raise RecipeError(f"{where}: phase name {name!r} is used twice.")
        names.add(name)
        where = f"{source}, phase {index} ({name})"
        raw_rules = entry.get("rules", [])
        if not isinstance(raw_rules, list):
            raise RecipeError(f"{where}: 'rules' must be a list of rules.")
        if index > 0 and not raw_rules:
            raise RecipeError(f"{where}: the phase has no rules, so it would change nothing; add rules.")
        rules = tuple(_parse_rule(rule, f"{where}, rule {number}") for number, rule in enumerate(raw_rules, 1))
        is_last = index == len(raw) - 1
        if "until" in entry and is_last:
            raise RecipeError(f"{where}: the last phase has no later phase to switch to; drop its 'until'.")
        if "until" not in entry and not is_last:
            raise RecipeError(f"{where}: the phase needs 'until' (step, epoch, metric or plateau).")
        until = _parse_trigger(entry["until"], where) if "until" in entry else None
        lr_scale = _typed(entry.get("lr_scale", 1.0), float, where, "lr_scale")
        if not lr_scale > 0:
            raise RecipeError(f"{where}: 'lr_scale' must be a positive number, not {lr_scale}.")
        phases.append(Phase(name=name, rules=rules, until=until, lr_scale=lr_scale))
    return tuple(phases)


def _parse_trigger(raw: Any, where: str) -> Trigger:
    where = f"{where}, until"
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: must be a mapping such as {{step: 100}}, not {raw!r}.")
    _check_keys(raw, _TRIGGER_KEYS, where)
    keys = set(raw)
    if keys in ({"step"}, {"epoch"}):
        (kind,) = keys
        value = _typed(raw[kind], int if kind == "step" else float, where, kind)
        if value <= 0:
            raise RecipeError(f"{where}: {kind!r} must be positive, not {value}.")
        return Trigger(kind=kind, value=value)
    if keys in ({"metric", "above"}, {"metric", "below"}):
        kind = "above" if "above" in keys else "below"
        metric = _typed(raw["metric"], str, where, "metric")
        return Trigger(kind=kind, metric=metric, value=_typed(raw[kind], float, where, kind))
    if keys == {"plateau"}:
        plateau = raw["plateau"]
        if not isinstance(plateau, dict):
            raise RecipeError(f"{where}: 'plateau' must be a mapping with 'metric' and 'patience'.")
        _check_keys(plateau, _PLATEAU_KEYS, f"{where}, plateau")
        if "metric" not in plateau or "patience" not in plateau:
            raise RecipeError(f"{where}: 'plateau' needs both 'metric' and 'patience'.")
        metric = _typed(plateau["metric"], str, where, "metric")
        patience = _typed(plateau["patience"], int, where, "patience")
        if patience < 1:
            raise RecipeError(f"{where}: 'patience' must be at least 1, not {patience}.")
        mode = _typed(plateau.get("mode", "min" if "loss" in metric else "max"), str, where, "mode")
        if mode not in ("min", "max"):
            raise RecipeError(f"{where}: 'mode' must be 'min' or 'max', not {mode!r}.")
        min_delta = _typed(plateau.get("min_delta", 0.0), float, where, "min_delta")
        return Trigger(kind="plateau", metric=metric, patience=patience, mode=mode, min_delta=min_delta)
    raise RecipeError(
        f"{where}: expected one of {{step: N}}, {{epoch: N}}, {{metric: M, above: X}}, {{metric: M, below: X}} "
        f"or {{plateau: {{metric: M, patience: N}}}}, not {raw!r}."
    )
