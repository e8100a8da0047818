"""The wheel: bundled recipes and every subpackage inside, so ``--recipe NAME`` works when installed.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation``) from a copy of the sources, so the
checkout gets no ``build/`` or ``*.egg-info`` folders; it is then installed with ``--target`` into a scratch
folder and used from a process whose working directory is outside the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUNDLED = {
    "freeze_encoder",
    "freeze_embeddings",
    "train_head_only",
    "freeze_dense_kernels",
    "train_top_blocks",
    "gradual_unfreeze",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of pyproject.toml, README.md, hf_freeze/ and recipes/."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("hf_freeze", "recipes"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    subprocess.run([*command, str(source)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("hf_freeze-*.whl")
    return built


def test_wheel_ships_every_bundled_recipe(wheel: Path) -> None:
    """hf_freeze/recipes/NAME.yaml for all six bundled recipes, byte for byte as in recipes/."""
    with zipfile.ZipFile(wheel) as archive:
        shipped = {
            Path(name).stem: archive.read(name)
            for name in archive.namelist()
            if name.startswith("hf_freeze/recipes/") and name.endswith(".yaml")
        }
    assert set(shipped) == BUNDLED
    for name, data in shipped.items():
        assert data == (REPO / "recipes" / f"{name}.yaml").read_bytes()


def test_wheel_ships_every_module_and_the_console_script(wheel: Path) -> None:
    """Every module of the source tree (subpackages included) and the ``hf-freeze`` entry point."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    modules = {path.relative_to(REPO).as_posix() for path in (REPO / "hf_freeze").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "hf-freeze = hf_freeze.cli:main" in entry_points


def test_installed_wheel_plans_with_a_bundled_recipe(wheel: Path, tmp_path: Path) -> None:
    """Installed with ``--target`` and run from outside the checkout: bundled names load and the CLI plans."""
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target)]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = textwrap.dedent(
        f"""
        import hf_freeze, transformers
        from hf_freeze import Recipe
        from hf_freeze.cli import main
        from hf_freeze.recipe import bundled_recipe_names
        assert hf_freeze.__file__.startswith({str(target)!r}), hf_freeze.__file__
        assert sorted(bundled_recipe_names()) == {sorted(BUNDLED)!r}, bundled_recipe_names()
        for name in bundled_recipe_names():
            assert Recipe.load(name).description
        config = transformers.BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=16, vocab_size=50, architectures=["BertModel"])
        config.to_json_file("config.json")
        raise SystemExit(main(["plan", "--config", "config.json", "--recipe", "freeze_encoder", "--json"]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert '"recipe": "freeze_encoder"' in result.stdout and '"trainable_parameters": 2' in result.stdout


def test_everything_but_deepspeed_works_without_deepspeed(tmp_path: Path) -> None:
    """DeepSpeed is optional (README command 1 does not install it): every module, ``scripts/train.py`` and a
    FreezeTrainer run that saves a checkpoint work in a process where ``import deepspeed`` fails."""
    script = textwrap.dedent(
        f"""
        import importlib, pkgutil, runpy, sys
        sys.modules["deepspeed"] = None  # import deepspeed raises; accelerate and transformers see it as absent
        sys.path.insert(0, {str(REPO / "tests")!r})
        import hf_freeze
        for module in pkgutil.walk_packages(hf_freeze.__path__, "hf_freeze."):
            if not module.name.endswith("__main__"):  # importing it runs the CLI
                importlib.import_module(module.name)
        runpy.run_path({str(REPO / "scripts" / "train.py")!r}, run_name="not_main")
        from transformers import TrainingArguments
        from hf_freeze import FreezeTrainer
        from tiny import random_text_dataset, tiny_model
        args = TrainingArguments(output_dir={str(tmp_path)!r}, max_steps=2, save_steps=2, use_cpu=True,
                                 report_to="none", per_device_train_batch_size=4)
        trainer = FreezeTrainer(model=tiny_model("bert"), args=args, recipe="train_head_only",
                                train_dataset=random_text_dataset(8))
        trainer.train()
        assert "deepspeed" not in sys.modules or sys.modules["deepspeed"] is None
        print("ran", trainer.state.global_step)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ran 2")
    assert (tmp_path / "checkpoint-2" / "delta_config.json").is_file()
