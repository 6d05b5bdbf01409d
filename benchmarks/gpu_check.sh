#!/usr/bin/env bash
# The CUDA paths in one run of at most 8 minutes on one GPU (docs/PERFORMANCE.md, "GPU"):
#   1. the tests that take the `device` fixture, on CUDA (pytest -m device --device cuda);
#   2. benchmarks/bench_batched.py --device cuda (batched ODAM, the loop and frozen GroupNorm statistics);
#   3. benchmarks/bench_nms.py --device cuda on a tiny synthetic crowd, and benchmarks/bench_drise.py --rpn-compare
#      (D-RISE with 5000 masks on Faster R-CNN: torchvision's per-image RPN against the batched one);
#   4. 5 training iterations (odam train uses AMP on CUDA by itself), stopped after that epoch's checkpoint as a
#      kill would stop it, then `odam train --resume` for the second epoch and the evaluation;
#   5. with two GPUs or more: `odam evaluate nms` in 2 processes over NCCL (torchrun).
# Each step prints its wall time; a step gets what is left of the budget, at most its own cap. The summary
# (card, versions, steps, the benchmarks' tables) goes to stdout, and with --write FILE also between the
# <!-- gpu_check:start --> and <!-- gpu_check:end --> markers of FILE. On a machine without a CUDA GPU it says so
# in one line and exits 0. Exit status: 0 when every step that ran passed, 1 otherwise, 2 on a usage error.
#
#   benchmarks/gpu_check.sh                                  # print
#   benchmarks/gpu_check.sh --write docs/PERFORMANCE.md      # and record
#   benchmarks/gpu_check.sh --budget 300                     # a shorter budget, in seconds
#   GPU_CHECK_SKIP=tests,bench_nms benchmarks/gpu_check.sh   # leave steps out
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SKIP=tests,bench_batched benchmarks/gpu_check.sh   # the plumbing, on a CPU
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
BUDGET=480
WRITE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --write) WRITE="${2:?--write needs a file}"; shift 2 ;;
        --budget) BUDGET="${2:?--budget needs seconds}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check: --budget must be whole seconds, got $BUDGET" >&2; exit 2 ;; esac
if [ -n "$WRITE" ] && ! grep -q '<!-- gpu_check:start -->' "$WRITE" 2>/dev/null; then
    echo "gpu_check: $WRITE has no <!-- gpu_check:start --> ... <!-- gpu_check:end --> markers" >&2
    exit 2
fi

PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null)"
if [ -z "$GPUS" ]; then
    echo "gpu_check: $PY cannot import torch" >&2
    exit 2
fi
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
SKIP=",${GPU_CHECK_SKIP:-},"
if [ "$DEVICE" = cpu ]; then
    GPUS=1  # a dry run of the plumbing: every step on the CPU, no NCCL
    SEEN="a dry run on the CPU"
elif [ "$GPUS" = 0 ]; then
    echo "gpu_check: no CUDA GPU visible to torch, nothing to run"
    exit 0
fi

START_S=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
CARD="$("$PY" -c 'import platform, torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")')"
if [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null 2>&1; then
    CARD="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader -i 0 2>/dev/null || echo "$CARD")"
fi
VERSIONS="$("$PY" -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")')"
ROWS=()
FAILED=0

# step NAME CAP COMMAND...: runs COMMAND with the smaller of CAP and the budget left; output to the terminal and
# to $WORK/NAME.log; records "| NAME | status | seconds |".
step() {
    local name="$1" cap="$2"
    shift 2
    if [[ "$SKIP" == *",$name,"* ]]; then
        echo "== $name: skipped (GPU_CHECK_SKIP)"
        ROWS+=("| $name | skipped (GPU_CHECK_SKIP) | - |")
        return 0
    fi
    local left=$((BUDGET - ($(date +%s) - START_S)))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 10 ]; then
        echo "== $name: skipped, ${left}s of the ${BUDGET}s budget left"
        ROWS+=("| $name | skipped (budget) | - |")
        FAILED=1
        return 1
    fi
    echo "== $name (at most ${limit}s): $*"
    local t0 t1 status
    t0=$(date +%s%N)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
    status=${PIPESTATUS[0]}
    t1=$(date +%s%N)
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    local verdict="passed"
    if [ "$status" = 124 ] || [ "$status" = 137 ]; then verdict="timed out (${limit}s)"; FAILED=1
    elif [ "$status" != 0 ]; then verdict="failed (exit $status)"; FAILED=1; fi
    echo "== $name: $verdict in ${secs}s"
    ROWS+=("| $name | $verdict | $secs |")
    [ "$verdict" = passed ]
}

DATA="$WORK/synthcrowd"
step data 60 "$PY" -m odam data synthcrowd --out "$DATA" --num-images 16 --seed 1 --size 128
step tests 200 "$PY" -m pytest -q -p no:cacheprovider -m device --device "$DEVICE" tests
step bench_batched 150 "$PY" benchmarks/bench_batched.py --device "$DEVICE" --ks 1,10,100
step bench_nms 120 "$PY" benchmarks/bench_nms.py --device "$DEVICE" --data "$DATA" --images 3 --r50-images 1 --check 2 \
    --repeats 5
step bench_drise 90 "$PY" benchmarks/bench_drise.py --rpn-compare --device "$DEVICE" --masks 5000 --repeats 2

# Training: 2 epochs of 5 iterations (15 training images at batch size 2 would be 8); the first run stops right
# after the first epoch's checkpoint, as a kill there would (the way tests/test_resume.py interrupts), and exits
# 130; --resume must then train the second epoch from it, GradScaler state included, and evaluate.
TRAIN=(train --out "$WORK/train" --device "$DEVICE" --model fcos --data "$DATA" --epochs 2 --max-iters 5
       --batch-size 2 --warmup-iters 2 --min-size 128 --max-size 128 --seed 0)
cat >"$WORK/train_then_stop.py" <<'EOF'
import json
import sys
from pathlib import Path

from odam.cli import main
from odam.train import engine

save = engine._save


def save_then_stop(*args, **kwargs):
    save(*args, **kwargs)
    raise KeyboardInterrupt  # as a Ctrl-C right after the first epoch's checkpoint


engine._save = save_then_stop
status = main(sys.argv[1:])
state = json.loads((Path(sys.argv[sys.argv.index("--out") + 1]) / "train_state.json").read_text())
print(f"odam train stopped after epoch {state['epoch']}, step {state['step']}, with exit status {status}; "
      f"AMP loss scaler saved: {'grad_scaler' in state}")
amp = "cuda" in sys.argv[sys.argv.index("--device") + 1]  # odam train uses AMP on CUDA and saves its scaler
sys.exit(0 if (status, state["epoch"], state["step"]) == (130, 1, 5) and ("grad_scaler" in state) == amp else 1)
EOF
cat >"$WORK/resume.py" <<'EOF'
import json
import sys
from pathlib import Path

from odam.cli import main

status = main([*sys.argv[1:], "--resume"])
state = json.loads((Path(sys.argv[sys.argv.index("--out") + 1]) / "train_state.json").read_text())
epochs = [h["epoch"] for h in state["history"]]
print(f"resumed: exit status {status}, epochs {epochs}, step {state['step']}, loss per epoch "
      f"{[round(h['loss'], 3) for h in state['history']]}, metrics {state.get('metrics')}")
sys.exit(0 if status == 0 and epochs == [1, 2] and state["step"] == 10 and "metrics" in state else 1)
EOF
step train_amp 90 "$PY" "$WORK/train_then_stop.py" "${TRAIN[@]}"
step train_resume 90 "$PY" "$WORK/resume.py" "${TRAIN[@]}"

if [ "$GPUS" -ge 2 ]; then
    step evaluate_nccl 90 "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m odam evaluate nms \
        --data "$DATA" --model synthcrowd-fcos --methods nms,odam-nms --max-images 8 --out "$WORK/evaluate" \
        --device cuda
else
    echo "== evaluate_nccl: skipped, 1 GPU (needs 2)"
    ROWS+=("| evaluate_nccl | skipped (1 GPU) | - |")
fi

TOTAL=$(($(date +%s) - START_S))
tables() {  # the markdown tables the benchmarks print (a line naming the command, then "| ..." rows)
    local log
    for log in "$WORK/bench_batched.log" "$WORK/bench_nms.log" "$WORK/bench_drise.log"; do
        [ -f "$log" ] || continue
        if [ "$log" = "$WORK/bench_drise.log" ]; then  # its table has no line naming the command
            printf '\n%s\n\n' "\`python benchmarks/bench_drise.py --rpn-compare --masks 5000 --repeats 2\`"
        fi
        awk '/^`python benchmarks\// { print ""; print; print ""; next } /^\|/ { print }' "$log"
    done
}
SUMMARY="$WORK/summary.md"
{
    echo "\`benchmarks/gpu_check.sh\` on $CARD (${SEEN:-$GPUS GPU(s)}), $VERSIONS; ${TOTAL}s of a ${BUDGET}s budget."
    echo
    echo "| step | status | seconds |"
    echo "|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    tables
} >"$SUMMARY"
echo
echo "== summary"
cat "$SUMMARY"
if [ -n "$WRITE" ]; then
    "$PY" - "$WRITE" "$SUMMARY" <<'EOF'
import re
import sys
from pathlib import Path

target, summary = Path(sys.argv[1]), Path(sys.argv[2]).read_text().strip()
start, end = "<!-- gpu_check:start -->", "<!-- gpu_check:end -->"
text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{summary}\n{end}", target.read_text(),
              flags=re.S)
target.write_text(text)
print(f"gpu_check: wrote the summary into {target}")
EOF
fi
exit "$FAILED"
