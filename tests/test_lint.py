"""The plan linter, the FSDP1 trainable wrap policy, ``hf-freeze plan --lint`` and the memory report (one process).

The multi-process facts the linter predicts (FSDP1's refusal of a mixed unit, gradient memory of a mixed unit,
FSDP2's mixed-precision phase change) are measured in tests/test_fsdp1.py and tests/test_fsdp2.py.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from peft.utils.other import fsdp_auto_wrap_policy
from test_packaging import BUNDLED
from tiny import tiny_config, tiny_model
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from workers.ddp_train import RECIPE, tiny_bert

from hf_freeze import RecipeError, apply_recipe
from hf_freeze.cli import main
from hf_freeze.fsdp1 import mixed_modules, parameter_keys, planned_units, trainable_units, trainable_wrap_policy
from hf_freeze.lint import lint
from hf_freeze.memory import memory_report, memory_stats
from hf_freeze.optim import param_groups
from hf_freeze.phases import phase_plans
from hf_freeze.recipe import Recipe

BITFIT = {
    "name": "bitfit",
    "default": "frozen",
    "rules": [{"select": "@blocks[-1:]", "params": "bias", "trainable": True}],
}
# Qwen3-MoE's experts are fused tensors with no `weight`: PEFT's FSDP policy, which wraps leaf modules whose
# `weight` trains, leaves them in their block's unit with the frozen attention.
FUSED_EXPERTS = {
    "name": "experts_top",
    "default": "frozen",
    "rules": [{"select": "@blocks[-1:]", "params": ["gate_up_proj", "down_proj"], "trainable": True}],
}


def test_one_unit_mixing_phases_is_an_error_naming_it_and_the_fix() -> None:
    findings = lint(tiny_bert(), RECIPE, "fsdp1")
    assert [finding.level for finding in findings] == ["error"]
    message = findings[0].message
    assert message.startswith("The FSDP1 root unit mixes parameters that train differently")
    assert "classifier.weight trains from phase 0" in message and "trains from phase 1" in message
    assert "trainable_wrap_policy(model, recipe)" in message and "use_orig_params=True" in message


def test_with_use_orig_params_a_mixed_unit_is_a_warning_counting_its_frozen_elements() -> None:
    model = tiny_bert()
    keys = parameter_keys(model, RECIPE)
    frozen = sum(param.numel() for name, param in model.named_parameters() if keys[name] is None)
    (finding,) = lint(model, RECIPE, "fsdp1", use_orig_params=True)
    assert finding.level == "warning" and f"its {frozen:,} frozen elements" in finding.message


def test_a_block_policy_leaves_only_the_root_unit_mixed() -> None:
    model = tiny_bert()
    policy = ModuleWrapPolicy({transformers.models.bert.modeling_bert.BertLayer})
    findings = lint(model, "train_head_only", "fsdp1", auto_wrap_policy=policy)
    assert len(findings) == 1 and "root unit" in findings[0].message


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "t5", "qwen3_moe"])
def test_trainable_policy_units_hold_one_key_each(arch: str) -> None:
    """For every bundled recipe that fits: no unit the policy makes mixes keys, except inside modules whose own
    parameters disagree (which no policy can separate)."""
    model = tiny_model(arch)
    checked = 0
    for name in BUNDLED:
        try:
            keys = parameter_keys(model, name)
        except RecipeError:  # the recipe's selectors do not fit this architecture
            continue
        impossible = {param for own in mixed_modules(model, keys).values() for param in own}
        for unit in planned_units(model, trainable_wrap_policy(model, name)):
            assert len({keys[param] for param in unit.params if param not in impossible}) <= 1, (name, unit)
        checked += 1
    assert checked >= 3


def test_fused_expert_tensors_peft_policy_mixes_them_ours_does_not() -> None:
    model = tiny_model("qwen3_moe")
    apply_recipe(model, FUSED_EXPERTS)
    (finding,) = lint(model, FUSED_EXPERTS, "fsdp1", auto_wrap_policy=fsdp_auto_wrap_policy(model))
    assert "unit 'model.layers.2' mixes" in finding.message
    assert "model.layers.2.mlp.experts" in trainable_units(model, FUSED_EXPERTS)
    assert lint(model, FUSED_EXPERTS, "fsdp1", auto_wrap_policy=trainable_wrap_policy(model, FUSED_EXPERTS)) == []


def test_a_module_whose_weight_and_bias_disagree_points_to_orig_params_or_fsdp2() -> None:
    model = tiny_bert()
    errors = lint(model, BITFIT, "fsdp1", auto_wrap_policy=trainable_wrap_policy(model, BITFIT))
    assert errors and errors[0].level == "error"
    assert errors[0].message.startswith("Module 'bert.encoder.layer.2.attention.self.query' (and 7 more modules")
    assert "use use_orig_params=True" in errors[0].message and "FSDP2 (fully_shard)" in errors[0].message
    relaxed = lint(model, BITFIT, "fsdp1", auto_wrap_policy=trainable_wrap_policy(model, BITFIT), use_orig_params=True)
    assert relaxed and all(finding.level == "warning" for finding in relaxed)


def test_fsdp2_warns_about_unfreezing_after_sharding_only_for_phased_recipes() -> None:
    (finding,) = lint(tiny_bert(), RECIPE, "fsdp2")
    assert finding.level == "warning" and "hf_freeze.fsdp.apply_phase" in finding.message
    assert lint(tiny_bert(), BITFIT, "fsdp2") == []


def test_deepspeed_refuses_a_late_unfreeze_unless_the_engine_is_rebuilt() -> None:
    (finding,) = lint(tiny_bert(), RECIPE, "deepspeed")
    assert finding.level == "error" and "bert.encoder.layer.2" in finding.message
    assert lint(tiny_bert(), RECIPE, "deepspeed", engine_rebuilt_per_phase=True) == []
    assert lint(tiny_bert(), BITFIT, "deepspeed") == []


# ---------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def bert_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("lint") / "config.json"
    tiny_config("bert").to_json_file(path)
    return str(path)


def plan_lint(capsys: pytest.CaptureFixture[str], config: str, recipe: str, *extra: str) -> tuple[int, str]:
    code = main(["plan", "--config", config, "--task", "sequence-classification", "--recipe", recipe, *extra])
    out, err = capsys.readouterr()
    assert err == ""
    return code, out


def test_cli_lint_prints_errors_and_exits_2(capsys: pytest.CaptureFixture[str], bert_config: str) -> None:
    code, out = plan_lint(capsys, bert_config, "train_head_only", "--lint", "fsdp1")
    lint_block = out[out.index("Lint (fsdp1): 1 finding(s)") :].splitlines()
    assert code == 2 and lint_block[1].startswith("error: The FSDP1 root unit mixes")


def test_cli_lint_with_the_trainable_policy_is_clean(capsys: pytest.CaptureFixture[str], bert_config: str) -> None:
    code, out = plan_lint(capsys, bert_config, "train_head_only", "--lint", "fsdp1", "--fsdp1-wrap", "trainable")
    assert code == 0 and out.rstrip().endswith("Lint (fsdp1): no problems found.")


def test_cli_lint_warnings_exit_0_and_json_lists_them(capsys: pytest.CaptureFixture[str], bert_config: str) -> None:
    code, out = plan_lint(capsys, bert_config, "gradual_unfreeze", "--lint", "fsdp2", "--json")
    findings = json.loads(out)["lint"]
    assert code == 0 and findings["engine"] == "fsdp2"
    assert [finding["level"] for finding in findings["findings"]] == ["warning"]
    code, out = plan_lint(capsys, bert_config, "gradual_unfreeze", "--lint", "deepspeed")
    assert code == 2 and "error: " in out


def test_cli_lint_rejects_an_unknown_engine(capsys: pytest.CaptureFixture[str], bert_config: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "--config", bert_config, "--recipe", "train_head_only", "--lint", "zero4"])
    assert exit_info.value.code == 2 and "invalid choice: 'zero4'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- memory report


def one_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    batch = {"input_ids": torch.tensor([[7, 5, 9, 11]]), "labels": torch.tensor([1])}
    model(**batch).loss.backward()
    optimizer.step()


def test_memory_report_at_the_limit_with_the_recipe_optimizer() -> None:
    model = tiny_bert()
    recipe = Recipe.from_dict(RECIPE)
    plans = phase_plans(model, recipe)
    apply_recipe(model, recipe)
    optimizer = torch.optim.AdamW(param_groups(plans, recipe, 1e-3, 0.0))
    one_step(model, optimizer)
    stats = memory_stats(model, optimizer)
    classifier = sum(param.numel() * 4 for param in model.classifier.parameters())
    assert stats["trainable_bytes"] == stats["gradient_bytes"] == stats["gradient_limit_bytes"] == classifier
    assert stats["optimizer_state_bytes"] == stats["optimizer_state_limit_bytes"] == 2 * classifier
    report = memory_report(model, optimizer)
    assert report.startswith("memory on rank 0 of 1 (none): parameters ")
    assert report.count("within it") == 2


def test_memory_report_shows_optimizer_state_for_frozen_tensors() -> None:
    """An optimizer that stepped every tensor before the recipe froze most of them keeps their state."""
    model = tiny_bert()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    one_step(model, optimizer)
    apply_recipe(model, RECIPE)
    report = memory_report(model, optimizer)
    assert "optimizer state" in report and report.rstrip(")").endswith("over")


def test_memory_report_without_an_optimizer() -> None:
    assert "optimizer state 0 B (trainable-only limit 0 B, within it)" in memory_report(tiny_bert())


def test_lint_on_a_meta_model_needs_no_weights(bert_config: str) -> None:
    with torch.device("meta"):
        model = transformers.BertForSequenceClassification(transformers.BertConfig.from_json_file(bert_config))
    policy = trainable_wrap_policy(model, "train_head_only")
    assert lint(model, "train_head_only", "fsdp1", auto_wrap_policy=policy) == []
    assert "root unit" in lint(model, "train_head_only", "fsdp1")[0].message
