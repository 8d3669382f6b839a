#!/usr/bin/env bash
# The CUDA checks in one run, for a lent GPU machine (under 8 minutes on an H100/H200):
#   1. the model and core tests with Triton compiled (TRITON_INTERPRET=0) and real xformers,
#      plus every test marked `cuda` (a step with no host sync, bf16, inductor);
#   2. bench_launch.py (aten ops and host reads per step; the same on every machine);
#   3. bench_gpu.py train: fdm-ds against ddpm with the default UNet at batch 64 and 512, fp32
#      and bf16 (fp16 with loss scaling at batch 64), eager and --compile; fdm-ds-64 against
#      ddpm-64 (batch 128) and fdm-ds-256 against ddpm-256 (batch 32) in bf16; side by side in
#      one process per configuration;
#   4. bench_gpu.py sample: s/img at batch 256, DDIM-100, fdm-ds:ddpm and fdm-ds-64:ddpm-64,
#      and fdm-ds:ddpm with a compiled graph per stage;
#   5. bench_kernels.py (Triton against torch, the fused stage mean among them), and fdm-ds
#      training with FDM_OPS_BACKEND=torch beside the default, to keep the faster path.
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

echo "== launch structure"
timeout 60 $PY bench/bench_launch.py --json "$OUT/launch.json" >"$OUT/launch.md" 2>&1
cat "$OUT/launch.md"

echo "== train"
G="timeout 150 $PY bench/bench_gpu.py"
{
    $G train --pairs fdm-ds:ddpm --batch 64 512 --precision fp32 bf16 --json "$OUT/t1.json"
    timeout 90 $PY bench/bench_gpu.py train --pairs fdm-ds:ddpm --batch 64 --precision fp16 \
        --json "$OUT/t1-fp16.json"
    FDM_COMPILE_MODE=reduce-overhead $G train --pairs fdm-ds:ddpm --batch 64 512 \
        --precision bf16 --compile on --json "$OUT/t2.json"
    $G train --pairs fdm-ds-64:ddpm-64 --batch 128 --precision bf16 --json "$OUT/t3.json"
    $G train --pairs fdm-ds-256:ddpm-256 --batch 32 --precision bf16 --window 10 \
        --json "$OUT/t4.json"
    # the fused stage-mean kernel off (torch's five passes), to compare with t1's batch 512 bf16
    FDM_OPS_BACKEND=torch $G train --pairs fdm-ds:ddpm --batch 512 --precision bf16 \
        --json "$OUT/t5.json"
} >"$OUT/train.md" 2>&1
cat "$OUT/train.md"

echo "== sample"
{
    $G sample --pairs fdm-ds:ddpm fdm-ds-64:ddpm-64 --batch 256 --repeats 2 \
        --json "$OUT/sample.json"
    # one graph per stage (fdm sample --compile), CUDA graphs through reduce-overhead
    FDM_COMPILE_MODE=reduce-overhead $G sample --pairs fdm-ds:ddpm --batch 256 --repeats 2 \
        --compile on --json "$OUT/sample-compiled.json"
} >"$OUT/sample.md" 2>&1
cat "$OUT/sample.md"

echo "== kernels"
timeout 60 $PY bench/bench_kernels.py >"$OUT/kernels.md" 2>&1
cat "$OUT/kernels.md"
