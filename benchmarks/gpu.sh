#!/usr/bin/env bash
# The GPU check of fastclr: every CUDA path that matters, in one script of about 7.5 minutes
# on one H200, each step under its own time limit so that one failure leaves the others'
# figures.
#
#   bash benchmarks/gpu.sh [OUT_DIR]          # default OUT_DIR: runs/gpu-check
#   DATA_DIR=/path/to/fashion-mnist EPOCHS=15 PYTHON=python3 bash benchmarks/gpu.sh
#
# 1. the machine: GPU, driver, torch and torchvision
# 2. fastclr installed into $PYTHON (editable, no dependencies: the machine's own torch)
# 3. the CUDA tests (augmentation on cuda against the CPU, channels_last choice, the GPU
#    preset's compiled bf16 step and a step that reads nothing back to the host)
# 4. augmentation throughput on cuda against torchvision's per-image pipeline on the CPU
# 5. the whole training step at ResNet-18 CIFAR size (cifar10-resnet18's model, 32 px RGB,
#    batch 512, bf16; synthetic images where CIFAR-10 is absent), eager and compiled:
#    views/s, MFU against the GPU's peak, the augmentation's share of a step; beside the
#    eager one, the peer loop (torchvision per PIL image in DataLoader workers), same model
# 6. pretraining with the GPU preset (fashion-mnist-resnet18: full ResNet-18, batch 512,
#    bf16, torch.compile), shortened to $EPOCHS epochs, then its final evaluation
# 7. the whole test suite on this machine, in parallel where pytest-xdist is installed
# 8. one summary table of the figures, for the README (also OUT_DIR/summary.md)
# Everything printed also lands in OUT_DIR (gpu.log, the benchmarks' JSON, the run's
# report.json, metrics.jsonl and train.log).
#
# Knobs to fit a short lease: STEP_MODES="compiled" (skip the eager step and its peer loop),
# SKIP_SUITE=1 (skip step 7), CUDA_TEST_LIMIT, EPOCHS, TRAIN_LIMIT, STEP_STEPS, AUG_BIG_BATCH.
# A dry run on a machine without a GPU (the CUDA steps fail and say so; the rest runs small):
#   SKIP_INSTALL=1 STEP_DEVICE=cpu STEP_STEPS=3 STEP_ARGS="--width 0.125 --batch-size 16" \
#   TRAIN_ARGS="--width 0.125 --batch-size 32 --max-steps 3 --compile false" EPOCHS=1 \
#   DATA_DIR=tests/fixtures/fashion-mnist-sample TEST_ARGS=tests/test_loss.py \
#   bash benchmarks/gpu.sh /tmp/gpu-dry-run
set -u
OUT_DIR=${1:-${OUT:-runs/gpu-check}}
PY=${PYTHON:-python3}
EPOCHS=${EPOCHS:-15}
TRAIN_LIMIT=${TRAIN_LIMIT:-240}
TEST_LIMIT=${TEST_LIMIT:-180}  # the suite's compile tests need ~1 min more than before
STEP_DEVICE=${STEP_DEVICE:-cuda}  # step 5's device
STEP_STEPS=${STEP_STEPS:-120}     # step 5's timed steps a loop, in 3 alternating slices
STEP_LIMIT=${STEP_LIMIT:-90}      # seconds for step 5's eager run; the compiled one gets 2x
read -r -a STEP_EXTRA <<< "${STEP_ARGS:-}"
read -r -a TRAIN_EXTRA <<< "${TRAIN_ARGS:-}"
read -r -a TEST_EXTRA <<< "${TEST_ARGS:-}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu.log"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
DATA_FLAG=()
[ -n "${DATA_DIR:-}" ] && DATA_FLAG=(--data-dir "$DATA_DIR")

step() { echo; echo "=== $(date +%T) $*"; }

step "1. machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import sys, torch, torchvision; print('python', sys.version.split()[0], '| torch', \
torch.__version__, '| torchvision', torchvision.__version__, '| cuda', torch.version.cuda, \
'| available', torch.cuda.is_available())"

step "2. install"
if [ -n "${SKIP_INSTALL:-}" ]; then
    echo "SKIP_INSTALL: running from the source tree"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
elif ! $PY -m pip install -q --no-deps --no-build-isolation --no-compile -e . \
        >"$OUT_DIR/pip.log" 2>&1; then
    echo "pip install failed (see pip.log); running from the source tree"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -c "import fastclr.augment as A; print('fastclr C kernel:', 'built' if A.NATIVE else 'absent')"

step "3. CUDA tests (augmentation; the GPU preset's compiled bf16 step; no host reads)"
timeout "${CUDA_TEST_LIMIT:-180}" $PY -m pytest -q -p no:cacheprovider -k cuda \
    tests/augment/test_augment.py tests/augment/test_extra.py tests/train/test_gpu_paths.py 2>&1 \
    | tee "$OUT_DIR/cuda-tests.txt"
echo "rc=${PIPESTATUS[0]}"

step "4. augmentation throughput (cuda vs torchvision per image on 1 CPU thread)"
timeout 120 $PY benchmarks/augment.py --device cuda --reference-images 1000 --json \
    | tee "$OUT_DIR/augment.json"
echo "rc=${PIPESTATUS[0]}"
echo "--- 32 px RGB at batch ${AUG_BIG_BATCH:-8192} (launch overheads amortised)"
timeout 60 $PY benchmarks/augment.py --device cuda --sizes 32 --batch "${AUG_BIG_BATCH:-8192}" \
    --reference-images 300
echo "rc=$?"

step "5. the whole training step: cifar10-resnet18 (32 px RGB), bf16, eager and compiled"
SYNTHETIC=()
$PY -c "import sys; from fastclr.data import find_root, get_spec; \
sys.exit(find_root(get_spec('cifar10'), 'train', None) is None)" 2>/dev/null \
    || { SYNTHETIC=(--synthetic); echo "CIFAR-10 not found: synthetic uint8 images"; }
# the peer loop runs beside the eager step only: peers do not compile, and compiling its copy
# of the model would cost the compiled run another ~20 s
for MODE in ${STEP_MODES:-eager compiled}; do
    if [ "$MODE" = compiled ]; then LIMIT=$((2 * STEP_LIMIT)) FLAGS=(--compile --no-peer) WARMUP=8
    else LIMIT=$STEP_LIMIT FLAGS=(--no-compile) WARMUP=5; fi
    echo "--- $MODE"
    timeout "$LIMIT" $PY benchmarks/train_step.py --config cifar10-resnet18 "${SYNTHETIC[@]}" \
        --device "$STEP_DEVICE" --precision bf16 "${FLAGS[@]}" --steps "$STEP_STEPS" \
        --warmup "$WARMUP" "${STEP_EXTRA[@]}" --json >"$OUT_DIR/train_step_$MODE.json"
    echo "rc=$?"
    $PY benchmarks/train_step.py --show "$OUT_DIR/train_step_$MODE.json"
done

step "6. pretraining: fashion-mnist-resnet18, $EPOCHS epochs, then the final evaluation"
RUN="$OUT_DIR/run"
rm -rf "$RUN"
timeout "$TRAIN_LIMIT" $PY -m fastclr train --config fashion-mnist-resnet18 "${DATA_FLAG[@]}" \
    --epochs "$EPOCHS" --warmup-epochs 1 --knn-every 5 --run-dir "$RUN" --tensorboard false \
    "${TRAIN_EXTRA[@]}"
echo "rc=$?"
$PY - "$RUN" <<'EOF'
import json, statistics, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] \
    if (run / "metrics.jsonl").exists() else []
speeds = [r["views_per_s"] for r in rows if "views_per_s" in r]
if speeds:
    steady = speeds[len(speeds) // 4:] or speeds
    print(f"views/s: median {statistics.median(steady):,.0f} over the last "
          f"{len(steady)} of {len(speeds)} log lines (first: {speeds[0]:,.0f}, compile included)")
for r in rows:
    if "knn_top1" in r:
        print(f"epoch {r['epoch']:.0f}: kNN monitor {100 * r['knn_top1']:.2f}%")
EOF
ls "$RUN" 2>/dev/null
cp "$RUN/report.json" "$RUN/metrics.jsonl" "$RUN/train.log" "$OUT_DIR/" 2>/dev/null

step "7. the test suite on this machine"
if [ -n "${SKIP_SUITE:-}" ]; then echo "SKIP_SUITE: not run"; else
XDIST=()
$PY -c "import xdist" 2>/dev/null && XDIST=(-n 8)
timeout "$TEST_LIMIT" $PY -m pytest -q -x -p no:cacheprovider "${XDIST[@]}" "${TEST_EXTRA[@]}" \
    2>&1 | tail -40 | tee "$OUT_DIR/tests.txt"
echo "rc=${PIPESTATUS[0]}"
fi

step "8. summary"
$PY benchmarks/gpu_summary.py "$OUT_DIR" | tee "$OUT_DIR/summary.md"
step "done"
