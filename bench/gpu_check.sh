#!/usr/bin/env bash
# The CUDA checks in one run, for a lent GPU machine (about 5 minutes on an H100/H200):
#   1. the model tests with Triton compiled (TRITON_INTERPRET=0) and real xformers, plus every
#      test marked `cuda`;
#   2. bench_kernels.py (Triton against torch, fp32/fp16/bf16, 64x3x256x256);
#   3. bench_unet.py on CUDA (per-stage time and FLOPs);
#   4. `fdm train` on CUDA, 300 steps per run: ddpm, fdm-ds and fdm-blur-g in fp32 and bf16,
#      steps/s from each run's loss.csv (steps 50..300, past warm-up).
#
# Run from the repository root:
#
#     bash bench/gpu_check.sh OUT_DIR
#
# Where the machine lacks a dependency, put wheels for it (and for the four fdm packages, built
# with `pip wheel --no-deps packages/fdm-*`) in .whl/: they are installed into /tmp/site first.
# Every step runs even if an earlier one fails; OUT_DIR gets one log per step.
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
PY=python3
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__)"
    $PY -c "import xformers; print('xformers', xformers.__version__)" 2>&1 | tail -1
    $PY -m fdm_cli env 2>&1 | head -40
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== tests"
timeout 300 $PY -m pytest -q -p no:cacheprovider -n 8 tests/fdm_models tests/fdm_core \
    >"$OUT/tests.txt" 2>&1
echo "rc $?" >>"$OUT/tests.txt"
timeout 120 $PY -m pytest -q -p no:cacheprovider -m cuda -rs tests >>"$OUT/tests.txt" 2>&1
echo "rc $?" >>"$OUT/tests.txt"
tail -15 "$OUT/tests.txt"

echo "== kernels"
timeout 180 $PY bench/bench_kernels.py >"$OUT/kernels.md" 2>&1
cat "$OUT/kernels.md"

echo "== unet"
timeout 120 $PY bench/bench_unet.py --device cuda >"$OUT/unet.md" 2>&1
cat "$OUT/unet.md"

echo "== train"
printf "| preset | precision | steps/s | mean loss, last 50 | wall s |\n|---|---|---|---|---|\n" >"$OUT/train.md"
for run in "ddpm fp32" "ddpm bf16" "fdm-ds fp32" "fdm-ds bf16" "fdm-blur-g bf16"; do
    set -- $run
    dir=/tmp/gpu-train/$1-$2
    rm -rf "$dir" && mkdir -p /tmp/gpu-train
    start=$(date +%s%N)
    timeout 150 $PY -m fdm_cli train --preset "$1" --precision "$2" --device cuda \
        --max-steps 300 --batch-size 64 --no-progress --out "$dir" --set sample.num=16 \
        >"$dir.log" 2>&1
    rc=$?
    wall=$(( ($(date +%s%N) - start) / 1000000000 ))
    $PY - "$dir" "$1" "$2" "$rc" "$wall" <<'EOF' >>"$OUT/train.md"
import csv, sys
from pathlib import Path
run, preset, precision, rc, wall = sys.argv[1:]
rows = list(csv.DictReader(open(Path(run) / "loss.csv"))) if rc == "0" else []
if len(rows) >= 300:
    a, b = rows[49], rows[299]
    rate = 250 / (float(b["elapsed_s"]) - float(a["elapsed_s"]))
    loss = sum(float(r["loss"]) for r in rows[-50:]) / 50
    print(f"| {preset} | {precision} | {rate:.1f} | {loss:.4f} | {float(wall):.0f} |")
else:
    print(f"| {preset} | {precision} | failed rc {rc} ({run}.log) | | {float(wall):.0f} |")
EOF
    [ "$rc" = 0 ] || tail -5 "$dir.log" >>"$OUT/train-errors.txt"
done
cat "$OUT/train.md"
