"""Recipe language v1: parsing, ``extends``, and at least 20 malformed recipes.

Each malformed recipe must raise ``RecipeError`` naming the file and the rule (or phase) at fault, leave
every ``requires_grad`` flag of a model as it was, and through the CLI print one line and exit 2.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from tiny import DEFAULT_CLASSES, tiny_config, tiny_model

from hf_freeze import Recipe, RecipeError, apply_recipe
from hf_freeze.cli import main

HEAD = "{select: '@head', trainable: true}"
BODY = "{select: '@body', trainable: false}"
PHASE_A = "{name: a, until: {step: 5}}"
PHASE_B = "{name: b, rules: [" + BODY + "]}"


def phased(first: str = PHASE_A, second: str = PHASE_B) -> str:
    """A recipe with a head rule and the two phases ``first`` and ``second``."""
    return f"rules: [{HEAD}]\nphases: [{first}, {second}]"


def ruled(*rules: str, head: bool = True) -> str:
    """A recipe whose rules are the head rule (unless ``head`` is false) followed by ``rules``."""
    return "rules: [" + ", ".join(([HEAD] if head else []) + list(rules)) + "]"


@dataclass(frozen=True)
class Malformed:
    """A malformed recipe file: its YAML, the fragments its error must contain, the model it is tried on."""

    id: str
    text: str
    fragments: tuple[str, ...]
    arch: str = "bert"
    extra_files: dict[str, str] = field(default_factory=dict)


CASES = [
    Malformed("unknown-top-key", ruled() + "\nrulez: []", ("unknown key 'rulez'",)),
    Malformed("unknown-rule-key", ruled("{select: '@body', trainable: false, kind: dense}"), ("rule 2", "key 'kind'")),
    Malformed("unknown-phase-key", phased("{name: a, until: {step: 5}, lr: 0.1}"), ("phase 0", "key 'lr'")),
    Malformed("unknown-trigger-key", phased("{name: a, until: {steps: 5}}"), ("phase 0 (a), until", "key 'steps'")),
    Malformed(
        "trainable-not-bool", ruled("{select: '@body', trainable: 'no'}"), ("rule 2", "'trainable' must be bool")
    ),
    Malformed("rules-not-list", "rules: {select: '@head', trainable: true}", ("'rules' must be a list",)),
    Malformed("match-not-string", ruled("{match: 5, trainable: false}"), ("rule 2", "'match' must be a string")),
    Malformed("optional-not-bool", ruled("{match: x, trainable: true, optional: 1}"), ("rule 2", "'optional' must be")),
    Malformed("eval-frozen-not-bool", "eval_frozen: 'on'\n" + ruled(), ("'eval_frozen' must be bool",)),
    Malformed(
        "lr-scale-not-number",
        phased(second="{name: b, rules: [" + BODY + "], lr_scale: fast}"),
        ("phase 1 (b)", "'lr_scale' must be float"),
    ),
    Malformed("rule-not-mapping", ruled("'@body'"), ("rule 2", "a rule must be a mapping")),
    Malformed("bad-regex", ruled("{match: 'bert\\.(encoder', trainable: false}"), ("rule 2", "regex", "is invalid")),
    Malformed(
        "rule-matches-nothing",
        ruled("{match: 'bert\\.encoderr', trainable: false}"),
        ("rule 2", "selects no parameter of BertForSequenceClassification", "optional: true"),
    ),
    Malformed("unknown-selector", ruled("{select: '@encoders', trainable: false}"), ("rule 2", "selector '@encoders'")),
    Malformed("bad-selector-index", ruled("{select: '@blocks[a:b]', trainable: false}"), ("rule 2", "bad index")),
    Malformed(
        "selector-index-out-of-range",
        ruled("{select: '@blocks[7]', trainable: true}"),
        ("rule 2", "BertForSequenceClassification", "3 blocks"),
    ),
    Malformed("selector-slice-step-zero", ruled("{select: '@blocks[::0]', trainable: true}"), ("rule 2", "step of 0")),
    Malformed(
        "index-on-head", ruled("{select: '@head[0]', trainable: true}", head=False), ("rule 1", "takes no index")
    ),
    Malformed("empty-params", ruled("{select: '@body', params: [], trainable: true}"), ("rule 2", "empty list")),
    Malformed(
        "bad-param-name", ruled("{select: '@body', params: [a.b], trainable: true}"), ("rule 2", "not a parameter")
    ),
    Malformed("empty-rules", "rules: []", ("'rules' is empty",)),
    Malformed("no-rules", "name: nothing\ndescription: forgot the rules", ("has no 'rules'",)),
    Malformed("empty-rule", ruled("{}"), ("rule 2", "no 'trainable'")),
    Malformed("missing-trainable", ruled("{select: '@embeddings'}"), ("rule 2", "no 'trainable'")),
    Malformed("bad-kind", ruled("{kinds: [dense, linear], trainable: false}"), ("rule 2", "unknown kind 'linear'")),
    Malformed("bad-default", "default: freeze\n" + ruled(), ("'default' must be one of", "'freeze'")),
    Malformed("trigger-incomplete", phased("{name: a, until: {metric: eval_loss}}"), ("phase 0 (a), until", "one of")),
    Malformed("trigger-negative-step", phased("{name: a, until: {step: -5}}"), ("phase 0 (a), until", "positive")),
    Malformed(
        "trigger-plateau-patience-zero",
        phased("{name: a, until: {plateau: {metric: eval_loss, patience: 0}}}"),
        ("phase 0 (a), until", "'patience' must be at least 1"),
    ),
    Malformed(
        "last-phase-with-until",
        phased(second="{name: b, rules: [" + BODY + "], until: {step: 9}}"),
        ("phase 1 (b)", "last phase", "drop its 'until'"),
    ),
    Malformed("phase-missing-until", phased("{name: a}"), ("phase 0 (a)", "needs 'until'")),
    Malformed("phase-without-rules", phased(second="{name: b}"), ("phase 1 (b)", "no rules")),
    Malformed(
        "phase-rule-bad",
        phased(second="{name: b, rules: [" + BODY + ", {select: '@bogus', trainable: true}]}"),
        ("phase 1 (b), rule 2", "unknown selector"),
    ),
    Malformed("single-phase", ruled() + "\nphases: [{name: only}]", ("single phase",)),
    Malformed(
        "duplicate-phase-name", phased(second="{name: a, rules: [" + BODY + "]}"), ("phase 1", "'a' is used twice")
    ),
    Malformed(
        "extends-cycle",
        "extends: other.yaml\n" + ruled(),
        ("'extends' forms a cycle", "other.yaml"),
        extra_files={"other.yaml": "extends: recipe.yaml\n" + ruled(BODY, head=False)},
    ),
    Malformed("extends-unknown", "extends: no_such_recipe\n" + ruled(), ("'extends'", "'no_such_recipe'")),
    Malformed("extends-missing-file", "extends: gone.yaml\n" + ruled(), ("'extends'", "gone.yaml", "does not exist")),
    Malformed("invalid-yaml", "rules: [{select: '@head', trainable: true}\n  - oops", ("not valid YAML",)),
    Malformed("python-tag-yaml", "rules: !!python/object/apply:os.system ['true']", ("not valid YAML",)),
    Malformed("non-mapping-yaml", "- select: '@head'\n  trainable: true", ("must be a mapping", "not list")),
    Malformed(
        "encoder-on-gpt2",
        ruled("{select: '@encoder', trainable: false}"),
        ("rule 2", "@encoder does not apply to GPT2LMHeadModel"),
        arch="gpt2",
    ),
    Malformed(
        "blocks-on-t5",
        ruled("{select: '@blocks[-1:]', trainable: false}"),
        ("rule 2", "does not apply to T5ForConditionalGeneration", "@encoder.blocks"),
        arch="t5",
    ),
]


def write_case(case: Malformed, folder: Path) -> Path:
    """Write the case's recipe as ``recipe.yaml`` (plus its extra files) into ``folder``."""
    for name, text in case.extra_files.items():
        (folder / name).write_text(text, encoding="utf-8")
    path = folder / "recipe.yaml"
    path.write_text(case.text, encoding="utf-8")
    return path


def write_config(arch: str, folder: Path) -> Path:
    """The tiny config of ``arch`` as a config.json naming its default class."""
    path = folder / f"{arch}_config.json"
    tiny_config(arch, architectures=[DEFAULT_CLASSES[arch]]).to_json_file(str(path))
    return path


def mixed_flags(model: torch.nn.Module) -> dict[str, bool]:
    """Freeze every third tensor; return the flags."""
    for index, param in enumerate(model.parameters()):
        param.requires_grad_(index % 3 != 0)
    return {name: param.requires_grad for name, param in model.named_parameters()}


def test_at_least_twenty_distinct_cases() -> None:
    """The issue asks for at least 20 malformed recipes; ids must be unique."""
    assert len({case.id for case in CASES}) == len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_malformed_recipe(case: Malformed, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """RecipeError naming file and rule; flags unchanged; CLI: one line on stderr, exit 2, no traceback."""
    path = write_case(case, tmp_path)
    model = tiny_model(case.arch)
    before = mixed_flags(model)
    with pytest.raises(RecipeError) as caught:
        apply_recipe(model, str(path))
    message = str(caught.value)
    assert str(path) in message, message
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message
    assert {name: param.requires_grad for name, param in model.named_parameters()} == before

    code = main(["plan", "--config", str(write_config(case.arch, tmp_path)), "--recipe", str(path)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == f"hf-freeze: error: {message}\n"
    assert "Traceback" not in err


def test_malformed_recipe_in_a_real_process(tmp_path: Path) -> None:
    """The installed ``hf-freeze`` console script: one line on stderr, exit 2, no traceback."""
    case = next(case for case in CASES if case.id == "rule-matches-nothing")
    path = write_case(case, tmp_path)
    executable = shutil.which("hf-freeze", path=str(Path(sys.executable).parent))
    assert executable is not None
    result = subprocess.run(
        [executable, "plan", "--config", str(write_config("bert", tmp_path)), "--recipe", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hf-freeze: error: ") and "rule 2" in lines[0] and "Traceback" not in result.stderr


def test_unknown_bundled_name_through_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A misspelt bundled name lists the real ones, in one line."""
    assert main(["plan", "--config", str(write_config("bert", tmp_path)), "--recipe", "freeze_encodr"]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "freeze_encodr" in err and "freeze_encoder" in err


# Well-formed recipes: parsing, defaults, aliases, extends, formats.


def test_kernel_is_an_alias_of_weight_and_defaults_are_spelled_out() -> None:
    """``kernel`` becomes ``weight``; omitted keys take their documented defaults."""
    recipe = Recipe.from_dict({"rules": [{"match": "0", "params": ["kernel", "bias", "weight"], "trainable": False}]})
    (rule,) = recipe.rules
    assert rule.params == ("weight", "bias")
    assert rule.kinds == ("any",) and rule.select == () and rule.optional is False
    assert recipe.default == "trainable" and recipe.phases == () and recipe.eval_frozen is False
    assert recipe.num_phases == 1 and rule.label == "<dict>, rule 1"


def test_round_trip_through_dict_yaml_and_json(tmp_path: Path) -> None:
    """to_dict() reads back to an equal recipe, from a dict, YAML text, JSON text and a .json file."""
    recipe = Recipe.load("gradual_unfreeze")
    data = recipe.to_dict()
    assert Recipe.from_dict(data) == Recipe.from_dict(json.loads(json.dumps(data)))
    assert Recipe.from_json(json.dumps(data)).to_dict() == data
    assert Recipe.from_yaml(Path("recipes/gradual_unfreeze.yaml").read_text()).to_dict() == data
    (tmp_path / "r.json").write_text(json.dumps(data))
    assert Recipe.load(tmp_path / "r.json").to_dict() == data


def test_bundled_phases_parse() -> None:
    """gradual_unfreeze: three phases with the documented triggers and learning-rate scales."""
    recipe = Recipe.load("gradual_unfreeze")
    assert [phase.name for phase in recipe.phases] == ["head", "top_blocks", "all"]
    head, top, last = recipe.phases
    assert (head.until.kind, head.until.metric, head.until.value) == ("above", "eval_accuracy", 0.7)
    assert (top.until.kind, top.until.value, top.lr_scale) == ("epoch", 1.0, 0.1)
    assert last.until is None and last.lr_scale == 0.01
    assert [len(recipe.rules_for_phase(phase)) for phase in range(3)] == [1, 2, 3]
    with pytest.raises(RecipeError, match="no phase 3"):
        recipe.rules_for_phase(3)


def test_extends_puts_parent_rules_first(tmp_path: Path) -> None:
    """A child recipe's rules follow its parent's; unset keys are inherited, set ones override."""
    (tmp_path / "base.yaml").write_text(
        "default: keep\neval_frozen: true\nrules: [{select: '@embeddings', trainable: false}]"
    )
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nrules: [{select: '@head', trainable: true}]")
    (tmp_path / "grandchild.yaml").write_text("extends: child.yaml\ndefault: frozen")
    recipe = Recipe.load(tmp_path / "grandchild.yaml")
    assert [rule.select for rule in recipe.rules] == [("@embeddings",), ("@head",)]
    assert recipe.default == "frozen" and recipe.eval_frozen is True
    assert recipe.rules[0].label == f"{tmp_path / 'base.yaml'}, rule 1"
    assert recipe.extends == (str(tmp_path / "base.yaml"), str(tmp_path / "child.yaml"))


def test_extends_a_bundled_recipe() -> None:
    """``extends`` accepts bundled names."""
    recipe = Recipe.from_dict({"extends": "freeze_encoder", "rules": [{"select": "@head", "trainable": False}]})
    assert len(recipe.rules) == 3 and recipe.rules[0].label == "freeze_encoder, rule 1"


def test_coerce_rejects_other_types() -> None:
    """A recipe is a Recipe, a dict, a name or a path; anything else is a RecipeError."""
    recipe = Recipe.load("freeze_encoder")
    assert Recipe.coerce(recipe) is recipe
    with pytest.raises(RecipeError, match="not list"):
        Recipe.coerce([{"select": "@head", "trainable": True}])
