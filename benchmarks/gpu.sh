#!/usr/bin/env bash
# The GPU check of fastclr: every CUDA path that matters, in one script of about 6 minutes on
# one H200, each step under its own time limit so that one failure leaves the others' figures.
#
#   bash benchmarks/gpu.sh [OUT_DIR]          # default OUT_DIR: runs/gpu-check
#   DATA_DIR=/path/to/fashion-mnist EPOCHS=15 PYTHON=python3 bash benchmarks/gpu.sh
#
# 1. the machine: GPU, driver, torch and torchvision
# 2. fastclr installed into $PYTHON (editable, no dependencies: the machine's own torch)
# 3. the CUDA tests (augmentation on cuda against the CPU, channels_last choice)
# 4. augmentation throughput on cuda against torchvision's per-image pipeline on the CPU
# 5. pretraining with the GPU preset (fashion-mnist-resnet18: full ResNet-18, batch 512,
#    bf16, torch.compile), shortened to $EPOCHS epochs, then its final evaluation
# 6. the whole test suite on this machine, in parallel where pytest-xdist is installed
# Everything printed also lands in OUT_DIR (gpu.log, the run's report.json, metrics.jsonl and
# train.log).
set -u
OUT_DIR=${1:-${OUT:-runs/gpu-check}}
PY=${PYTHON:-python3}
EPOCHS=${EPOCHS:-15}
TRAIN_LIMIT=${TRAIN_LIMIT:-240}
TEST_LIMIT=${TEST_LIMIT:-120}
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
if ! $PY -m pip install -q --no-deps --no-build-isolation --no-compile -e . >"$OUT_DIR/pip.log" 2>&1
then
    echo "pip install failed (see pip.log); running from the source tree"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -c "import fastclr.augment as A; print('fastclr C kernel:', 'built' if A.NATIVE else 'absent')"

step "3. CUDA tests"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_augment.py -k cuda \
    tests/test_models.py tests/test_loss.py
echo "rc=$?"

step "4. augmentation throughput (cuda vs torchvision per image on 1 CPU thread)"
timeout 120 $PY benchmarks/augment.py --device cuda --reference-images 1000

step "5. pretraining: fashion-mnist-resnet18, $EPOCHS epochs, then the final evaluation"
RUN="$OUT_DIR/run"
rm -rf "$RUN"
timeout "$TRAIN_LIMIT" $PY -m fastclr train --config fashion-mnist-resnet18 "${DATA_FLAG[@]}" \
    --epochs "$EPOCHS" --warmup-epochs 1 --knn-every 5 --run-dir "$RUN" --tensorboard false
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

step "6. the test suite on this machine"
XDIST=()
$PY -c "import xdist" 2>/dev/null && XDIST=(-n 8)
timeout "$TEST_LIMIT" $PY -m pytest -q -x -p no:cacheprovider "${XDIST[@]}" 2>&1 | tail -40
echo "rc=${PIPESTATUS[0]}"
step "done"
