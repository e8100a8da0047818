"""Run a script as two real DDP processes on CPU with ``accelerate launch`` (DESIGN section 7).

``accelerate launch --cpu --num_processes 2`` starts ONE process; two CPU processes need ``--multi_gpu`` with
``ACCELERATE_USE_CPU=1``. Without the CPU flag both processes run alone (world size 1) with no error, so a
launched script must check ``torch.distributed.get_world_size() == 2`` itself and write what it found.

One rank in ~40 runs aborts at teardown after finishing its work. Judge a run by the files its ranks wrote,
not by the exit status: :func:`rank_outputs` waits for nothing and raises with the captured output when a
rank's result is missing.

Usage::

    from launch import launch_two_processes, rank_outputs

    result = launch_two_processes("tests/workers/ddp_train.py", "--out", str(out))
    ranks = rank_outputs(result, out, "result.json")   # [out/rank0/result.json, out/rank1/result.json]

:func:`run_one_process` runs the same script as one plain Python process with the same environment. Paths are
relative to the repository root (the working directory of both); ``tests/`` and the root are importable.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import psutil

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
WORKERS = TESTS / "workers"

DEFAULT_TIMEOUT = 300.0


def worker_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a launched (or plain subprocess) worker: CPU only, offline, one thread per process,
    ``tests/`` importable; ``env`` entries win."""
    out = dict(os.environ)
    out.update(
        {
            "ACCELERATE_USE_CPU": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), str(REPO), os.environ.get("PYTHONPATH")])),
        }
    )
    out.update(env or {})
    return out


def launch_two_processes(
    script: str | os.PathLike,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    num_processes: int = 2,
) -> subprocess.CompletedProcess[str]:
    """Run ``script args`` under ``accelerate launch`` as ``num_processes`` CPU DDP processes (gloo).

    The rendezvous port is a free one (``--main_process_port 0``), so concurrent launches do not collide.
    Output is captured as text; the exit status is NOT checked (see the module docstring). ``env`` adds to
    :func:`worker_env`. After ``timeout`` seconds the launcher and its ranks are killed and
    ``subprocess.TimeoutExpired`` (with the output so far) is raised.
    """
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "1",
        "--main_process_port",
        "0",
        str(script),
        *args,
    ]
    return _run(command, env, timeout)


def launch_torchrun(
    script: str | os.PathLike,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    num_processes: int = 2,
) -> subprocess.CompletedProcess[str]:
    """Run ``script args`` as ``num_processes`` ranks under ``torchrun --standalone`` (a free rendezvous port).

    For engines Accelerate cannot reach on CPU (DeepSpeed): the script initialises the process group itself
    (gloo). Same environment, capture and exit-status rule as :func:`launch_two_processes`.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}"]
    return _run([*command, str(script), *args], env, timeout)


def run_one_process(
    script: str | os.PathLike,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``script args`` as one plain Python process with the same environment as a launched worker."""
    return _run([sys.executable, str(script), *args], env, timeout)


def _run(command: list[str], env: Mapping[str, str] | None, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``command``; on timeout end it and every process it started (torchrun puts ranks in new sessions)."""
    with subprocess.Popen(
        command, env=worker_env(env), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _end_tree(process.pid)
            stdout, stderr = process.communicate()
            raise subprocess.TimeoutExpired(command, timeout, stdout, stderr) from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _end_tree(pid: int, grace: float = 10.0) -> None:
    """SIGTERM ``pid`` and its descendants (found before any of them exits); SIGKILL what is left after ``grace``."""
    root = psutil.Process(pid)
    tree = [root, *root.children(recursive=True)]
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def rank_outputs(
    result: subprocess.CompletedProcess[str], folder: str | os.PathLike, name: str, num_processes: int = 2
) -> list[Path]:
    """``folder/rank{i}/name`` for every rank; raises ``AssertionError`` with the run's output if one is missing."""
    paths = [Path(folder, f"rank{rank}", name) for rank in range(num_processes)]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise AssertionError(
            f"{' '.join(result.args)} exited {result.returncode} without writing {missing}.\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return paths
