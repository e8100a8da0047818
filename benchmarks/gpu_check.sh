#!/usr/bin/env bash
# GPU check of issue 6: FreezeTrainer on FSDP2 (phased recipe, bf16) and on DeepSpeed ZeRO-3 (a run with
# trainable-only checkpoints, a run resumed from one, a phased run that must be refused at its phase change), each
# launched with `accelerate launch --config_file`, then a one-process check of the delta and of the frozen weights.
#
#   bash benchmarks/gpu_check.sh            # from anywhere; uses .venv if the checkout has one
#   OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
#
# Every step prints one PASS or FAIL line (a failed step also prints the tail of its log); the last line is the
# verdict and the exit status is the number of FAILs (0: all passed). Each of the four launches is limited to
# STEP_LIMIT seconds (default 100), so the whole run stays under 8 minutes. The PASS/FAIL lines are also written into the
# gpu_check section of benchmarks/results.md. Details of what runs: benchmarks/gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
STEP_LIMIT=${STEP_LIMIT:-100}
SUMMARY="$OUT/summary.txt"
mkdir -p "$OUT" && : > "$SUMMARY"
FAILS=0

say() { echo "$1" | tee -a "$SUMMARY"; }
fail() { say "FAIL $1"; FAILS=$((FAILS + 1)); }

# step NAME COMMAND...: run with a time limit, log to $OUT/NAME.log, one PASS/FAIL line.
step() {
    local name=$1; shift
    if timeout "$STEP_LIMIT" "$@" > "$OUT/$name.log" 2>&1; then
        say "PASS $name"
    else
        fail "$name (exit $?; log $OUT/$name.log)"
        tail -n 25 "$OUT/$name.log"
        return 1
    fi
}

# check ENGINE: the one-process checks; their PASS/FAIL lines go to the summary as they are.
check() {
    python benchmarks/gpu_check.py check --engine "$1" --out "$OUT" 2>"$OUT/check-$1.log" | tee -a "$SUMMARY"
    local status=${PIPESTATUS[0]}
    if [ "$status" -ne 0 ]; then FAILS=$((FAILS + 1)); tail -n 5 "$OUT/check-$1.log"; fi
}

GPUS=$(python -c "import torch; print(min(torch.cuda.device_count(), 2))" 2>/dev/null || echo 0)
if [ "$GPUS" -lt 1 ]; then
    fail "gpu: torch sees no CUDA device"
    echo "FAIL gpu_check: $FAILS failure(s)"
    exit "$FAILS"
fi
say "PASS gpu: $GPUS CUDA device(s) used ($(python -c 'import torch; print(torch.cuda.get_device_name(0))'))"
step prepare python benchmarks/gpu_check.py prepare --out "$OUT" --processes "$GPUS"

if step fsdp2-train accelerate launch --config_file "$OUT/fsdp2.yaml" \
        benchmarks/gpu_check.py train --engine fsdp2 --out "$OUT"; then
    grep -h "^phase\|memory on rank" "$OUT/fsdp2-train.log" | sed 's/^/    /' | tee -a "$SUMMARY"
    check fsdp2
fi

# DeepSpeed part: FreezeTrainer with a ZeRO-3 config (its DeepSpeed path: current-phase optimizer groups,
# trainable-only engine checkpoints, save_model gathering on every rank, non-strict resume, late-unfreeze refusal).
if python -c "import deepspeed" > /dev/null 2>&1; then
    if step deepspeed-train accelerate launch --config_file "$OUT/deepspeed.yaml" \
            benchmarks/gpu_check.py train --engine deepspeed --out "$OUT"; then
        grep -h "^phase\|memory on rank" "$OUT/deepspeed-train.log" | sed 's/^/    /' | tee -a "$SUMMARY"
        check deepspeed
        if step deepspeed-resume accelerate launch --config_file "$OUT/deepspeed.yaml" \
                benchmarks/gpu_check.py train --engine deepspeed-resume --out "$OUT"; then
            check deepspeed-resume
        fi
    fi
    if step deepspeed-late accelerate launch --config_file "$OUT/deepspeed.yaml" \
            benchmarks/gpu_check.py train --engine deepspeed-late --out "$OUT"; then
        check deepspeed-late
    fi
else
    fail "deepspeed: not importable here (pip install deepspeed)"
fi

VERDICT=$([ "$FAILS" -eq 0 ] && echo PASS || echo FAIL)
say "$VERDICT gpu_check: $FAILS failure(s); outputs in $OUT"
python benchmarks/gpu_check.py record --summary "$SUMMARY" || echo "(results.md not updated)"
exit "$FAILS"
