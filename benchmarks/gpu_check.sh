#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (a lent GPU machine's time is short):
#   1. proxy-training throughput on the GPU (bench_search.py trial-cost),
#   2. the 5x-longer-training ranking fidelity (bench_search.py fidelity): it goes on from
#      benchmarks/results/fidelity-h200.json, so trainings done in an earlier session are not repeated,
#   3. the CUDA tests (bf16 autocast, channels-last, the trainer on the GPU) and the trainer's tests.
# Usage: benchmarks/gpu_check.sh [OUTDIR] [DATA_DIR]   (logs and fidelity.json land in OUTDIR)
# Set SKIP=trial-cost,tests to leave parts out, FIDELITY_TIMEOUT (seconds, default 400) to bound step 2.
# A lent GPU machine has torch but neither fvcore nor the data: copy the pure-Python packages fvcore, iopath,
# yacs and termcolor from a local venv's site-packages into .devsite/, the Fashion-MNIST train-*.gz files into
# .devdata/fashion-mnist/ (both git-ignored via .git/info/exclude), carry both, and run
#   PYTHONPATH=$PWD/.devsite:$PWD bash benchmarks/gpu_check.sh $OUT .devdata/fashion-mnist
set -u
out=${1:-gpu-check}; data=${2:-}; skip=${SKIP:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
data_flag=${data:+--data-dir $data}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
if [[ $skip != *trial-cost* ]]; then
    timeout 90 python3 benchmarks/bench_search.py trial-cost --archs 5 $data_flag 2>&1 | tee "$out/trial_cost.txt"
fi
cp benchmarks/results/fidelity-h200.json "$out/fidelity.json"
timeout "${FIDELITY_TIMEOUT:-400}" python3 benchmarks/bench_search.py fidelity --archs 10 --jobs 6 --threads 2 \
    --long-batch 256 --long-lr 6e-3 --out "$out/fidelity.json" $data_flag 2>&1 | tee "$out/fidelity.txt"
if [[ $skip != *tests* ]]; then
    timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_train.py >"$out/tests.txt" 2>&1
    echo "tests: exit $?"; tail -5 "$out/tests.txt"
fi
