"""The Python half of ``benchmarks/gpu_check.sh``: FreezeTrainer on FSDP2 and DeepSpeed ZeRO-3, then checks.

    python benchmarks/gpu_check.py prepare --out DIR                 # base model, recipes, launch configs
    accelerate launch --config_file DIR/fsdp2.yaml benchmarks/gpu_check.py train --engine fsdp2 --out DIR
    accelerate launch --config_file DIR/deepspeed.yaml benchmarks/gpu_check.py train --engine deepspeed --out DIR
    (the same for --engine deepspeed-resume, then --engine deepspeed-late)
    python benchmarks/gpu_check.py check --engine fsdp2 --out DIR     # PASS/FAIL lines; exit 1 on a FAIL
    python benchmarks/gpu_check.py record --summary DIR/summary.txt  # into benchmarks/results.md

The base is a small seeded BERT classifier (4 layers, hidden 128, no dropout) saved with ``save_pretrained`` into
``DIR/base``, so deltas record it as their base and ``load_model_with_delta`` rebuilds it. The model is
loaded before ``TrainingArguments`` exist, so ZeRO-3 does not partition it at load time and FreezeTrainer
records its base samples whole.

- ``fsdp2``: the recipe trains the head, then also the top block from step ``SWITCH_STEP`` (a unit frozen at
  its first forward is unfrozen after sharding, under bf16 mixed precision). ``trainer.save_model`` writes the
  delta (every rank gathers what trains, rank 0 writes).
- ``deepspeed``: ZeRO-3 in fp32, FreezeTrainer's DeepSpeed path: its ``create_optimizer`` (called by
  transformers' ``deepspeed_init``) builds the current phase's groups; the recipe trains the head and the top
  block from the start. Checkpoints every ``SAVE_STEPS`` steps leave frozen tensors out of the engine's
  checkpoint; ``trainer.save_model`` writes the delta on every rank (ZeRO-3 partitions gathered, rank 0 writes).
- ``deepspeed-resume``: resumes the ``deepspeed`` run from its first checkpoint (phase state first, then the
  engine's trainable-only checkpoint loaded non-strictly) and must end where that run ended.
- ``deepspeed-late``: the phased recipe of ``fsdp2``; the engine holds only the head, so the phase change at
  ``SWITCH_STEP`` must stop the run with ``hf_freeze.deepspeed``'s one-sentence ``RecipeError``.

After training, rank 0 also writes every parameter, gathered (``final.safetensors``), so the check can
compare frozen weights bitwise with the base, trained ones with the delta. Every rank prints its memory line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import transformers

from hf_freeze import Recipe, plan
from hf_freeze.delta import load_model_with_delta, read_delta_config

SWITCH_STEP = 4
MAX_STEPS = 10
SAVE_STEPS = 5
ROWS = 160
RECIPES: dict[str, dict[str, Any]] = {
    "fsdp2": {
        "name": "gpu_check_phased",
        "default": "frozen",
        "rules": [{"select": "@head", "trainable": True}],
        "phases": [
            {"name": "head", "until": {"step": SWITCH_STEP}},
            {"name": "top", "rules": [{"select": "@blocks[-1:]", "trainable": True}]},
        ],
    },
    "deepspeed": {
        "name": "gpu_check_top",
        "default": "frozen",
        "rules": [{"select": "@head", "trainable": True}, {"select": "@blocks[-1:]", "trainable": True}],
    },
}
RECIPES["deepspeed-resume"] = RECIPES["deepspeed"]
RECIPES["deepspeed-late"] = RECIPES["fsdp2"]
FINAL_PHASE = {"fsdp2": 1, "deepspeed": 0, "deepspeed-resume": 0}
FSDP2_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
mixed_precision: bf16
num_machines: 1
num_processes: {processes}
machine_rank: 0
main_training_function: main
rdzv_backend: static
same_network: true
use_cpu: false
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: BertLayer
  fsdp_reshard_after_forward: true
  fsdp_cpu_ram_efficient_loading: false
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_activation_checkpointing: false
"""
DEEPSPEED_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
mixed_precision: 'no'
num_machines: 1
num_processes: {processes}
machine_rank: 0
main_training_function: main
rdzv_backend: static
same_network: true
use_cpu: false
deepspeed_config:
  deepspeed_config_file: {ds_json}
  zero3_init_flag: false
"""
DEEPSPEED_JSON = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False},
    "bf16": {"enabled": False},
    "fp16": {"enabled": False},
}


def prepare(out: Path, processes: int) -> None:
    """The base model, the accelerate configs and the DeepSpeed JSON under ``out``."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=256,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,  # a resumed run can match bit for bit
    )
    transformers.BertForSequenceClassification(config).save_pretrained(out / "base")
    (out / "deepspeed.json").write_text(json.dumps(DEEPSPEED_JSON, indent=2))
    (out / "fsdp2.yaml").write_text(FSDP2_CONFIG.format(processes=processes))
    ds_json = out / "deepspeed.json"
    (out / "deepspeed.yaml").write_text(DEEPSPEED_CONFIG.format(processes=processes, ds_json=ds_json))


def dataset(vocab: int) -> Any:
    """Seeded random token ids with a learnable label (token 5 present or not)."""
    import datasets

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(6, vocab, (ROWS, 16), generator=generator)
    labels = torch.randint(0, 2, (ROWS,), generator=generator)
    ids[:, 1] = torch.where(labels == 1, 5, ids[:, 1])
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def train(out: Path, engine: str) -> None:
    """FreezeTrainer under the launched engine; writes the delta and (rank 0) every final parameter."""
    from hf_freeze import FreezeTrainer
    from hf_freeze.memory import MemoryReportCallback

    deepspeed = engine.startswith("deepspeed")
    model = transformers.BertForSequenceClassification.from_pretrained(out / "base")  # before TrainingArguments
    folder = out / engine
    args = transformers.TrainingArguments(
        output_dir=str(folder / "run"),
        per_device_train_batch_size=8,
        max_steps=MAX_STEPS,
        learning_rate=1e-3,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="steps" if engine == "deepspeed" else "no",
        save_steps=SAVE_STEPS,
        report_to="none",
        seed=0,
        bf16=engine == "fsdp2" and torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # a dry run of this script without a GPU
        deepspeed=str(out / "deepspeed.json") if deepspeed else None,
    )
    data = dataset(model.config.vocab_size)
    trainer = FreezeTrainer(model=model, args=args, recipe=RECIPES[engine], train_dataset=data)
    trainer.add_callback(MemoryReportCallback(trainer))  # as scripts/train.py: each rank's memory at step 2
    if engine == "deepspeed-late":
        return train_until_refused(trainer, folder)
    resume = out / "deepspeed" / "run" / f"checkpoint-{SAVE_STEPS}" if engine == "deepspeed-resume" else None
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    print(f"phase {trainer.phases.phase}", flush=True)
    trainer.save_model(str(folder / "delta"))  # every rank: FSDP and ZeRO-3 gather what trains, rank 0 writes
    final = gathered_parameters(trainer, engine)
    if trainer.args.process_index == 0:
        from safetensors.torch import save_file

        save_file(final, str(folder / "final.safetensors"))
        (folder / "train.json").write_text(json.dumps({"phase": trainer.phases.phase}))


def train_until_refused(trainer: Any, folder: Path) -> None:
    """Train until the phase change stops the run; rank 0 writes the error and the step into ``refusal.json``."""
    from hf_freeze import RecipeError

    try:
        trainer.train()
        message = None
    except RecipeError as error:
        message = str(error)
    if trainer.args.process_index == 0:
        folder.mkdir(parents=True, exist_ok=True)
        state = {"message": message, "step": trainer.state.global_step, "phase": trainer.phases.phase}
        (folder / "refusal.json").write_text(json.dumps(state))
    print(f"refusal at step {trainer.state.global_step}: {message}", flush=True)


def gathered_parameters(trainer: Any, engine: str) -> dict[str, torch.Tensor]:
    """Every parameter, whole, on rank 0 (a collective; a check only: it gathers frozen weights too)."""
    model = trainer.model
    if engine.startswith("deepspeed"):
        import deepspeed

        params = dict(trainer.model_wrapped.module.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
            return {name: param.detach().cpu().clone() for name, param in params.items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not torch.distributed.is_initialized():  # one process, not sharded (a dry run of this script)
        return {name: param.detach().cpu().clone() for name, param in model.named_parameters()}
    names = {name for name, _ in model.named_parameters()}
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {name: tensor.contiguous() for name, tensor in state.items() if name in names}


def check(out: Path, engine: str) -> bool:
    """PASS/FAIL lines for one engine's delta, frozen weights and trained weights; True if all pass."""
    folder = out / engine
    results: list[tuple[bool, str]] = []

    def verdict(ok: bool, text: str) -> None:
        results.append((ok, text))
        print(f"{'PASS' if ok else 'FAIL'} {engine}: {text}", flush=True)

    try:
        (_refusal_checks if engine == "deepspeed-late" else _checks)(out, engine, folder, verdict)
    except Exception as error:  # a missing file or a refused delta is a FAIL line, not a traceback
        verdict(False, f"{type(error).__name__}: {error}")
    return bool(results) and all(ok for ok, _ in results)


def _checks(out: Path, engine: str, folder: Path, verdict: Any) -> None:
    """The checks of :func:`check`, in order; each reports through ``verdict(ok, text)``."""
    from safetensors.torch import load_file

    base = transformers.BertForSequenceClassification.from_pretrained(out / "base")
    expected = set(plan(base, Recipe.from_dict(RECIPES[engine]), phase=FINAL_PHASE[engine]).trainable)
    state = json.loads((folder / "train.json").read_text())
    verdict(state["phase"] == FINAL_PHASE[engine], f"training ended in phase {state['phase']}")
    config = read_delta_config(folder / "delta")
    verdict(set(config["tensors"]) == expected, f"the delta holds exactly the {len(expected)} trained tensors")
    loaded = load_model_with_delta(folder / "delta", base=str(out / "base"))  # verifies the base fingerprint
    verdict(True, "the delta verifies against a fresh base and loads")
    final = load_file(folder / "final.safetensors")
    base_params = dict(base.named_parameters())
    frozen = [name for name in base_params if name not in expected]
    verdict(all(torch.equal(final[name], base_params[name]) for name in frozen), f"{len(frozen)} frozen bitwise")
    moved = [name for name in expected if not torch.equal(final[name], base_params[name])]
    verdict(len(moved) == len(expected), f"{len(moved)} of {len(expected)} trained tensors moved")
    loaded_params = dict(loaded.named_parameters())
    same = all(torch.equal(loaded_params[name].detach().cpu(), final[name]) for name in final)
    verdict(same, "base + delta equals the trained model, every tensor")
    if engine == "deepspeed":
        _checkpoint_checks(folder / "run" / f"checkpoint-{SAVE_STEPS}", expected, verdict)
    if engine == "deepspeed-resume":
        first = load_file(out / "deepspeed" / "final.safetensors")
        close = all(torch.allclose(final[name], first[name], rtol=0, atol=1e-5) for name in first)
        verdict(close, f"resumed from checkpoint-{SAVE_STEPS}, it ends where the uninterrupted run ended")


def _checkpoint_checks(checkpoint: Path, expected: set[str], verdict: Any) -> None:
    """A FreezeTrainer DeepSpeed checkpoint: phase state and delta, and engine files without frozen tensors."""
    files = sorted(checkpoint.glob("global_step*/*model_states.pt"))
    ok = (checkpoint / "hf_freeze_state.json").is_file() and (checkpoint / "delta_config.json").is_file()
    verdict(ok and bool(files), f"{checkpoint.name} holds the phase state, the delta and {len(files)} engine file(s)")
    modules = [set(torch.load(file, map_location="cpu", weights_only=False)["module"]) for file in files]
    verdict(all(module == expected for module in modules), "the engine checkpoint holds the trained tensors only")


def _refusal_checks(out: Path, engine: str, folder: Path, verdict: Any) -> None:
    """The phased recipe under DeepSpeed stopped at its phase change with the one-sentence RecipeError."""
    state = json.loads((folder / "refusal.json").read_text())
    message = state["message"] or ""
    verdict(state["step"] == SWITCH_STEP and state["phase"] == 0, f"stopped at step {state['step']}, in phase 0")
    expected = ("phase 1 (top): unfreezes", "after the DeepSpeed ZeRO-3 engine was built", "initialize(..., phase=1)")
    verdict(all(part in message for part in expected) and "\n" not in message, f"refused: {message[:90]}...")


def record(summary: Path) -> None:
    """Write the PASS/FAIL lines of a run into the ``gpu_check`` section of benchmarks/results.md."""
    from results import machine, write_section

    lines = summary.read_text().strip()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    write_section(
        "gpu_check",
        f"## GPU check (`bash benchmarks/gpu_check.sh`)\n\nOn {device}; {machine()}.\n\n```\n{lines}\n```\n",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("prepare", "train", "check", "record"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--engine", choices=tuple(RECIPES))
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--summary", type=Path)
    options = parser.parse_args(argv)
    if options.action == "prepare":
        prepare(options.out, options.processes)
    elif options.action == "train":
        train(options.out, options.engine)
    elif options.action == "check":
        return 0 if check(options.out, options.engine) else 1
    else:
        record(options.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
