#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one call of a lent GPU machine (issue 22): benchmarks/gpu_session.py runs
# the step-speed and packing sweep, the full-width calibration jobs and tests/test_cuda.py, stops before the time
# limit, and continues from benchmarks/results/gpu-session/results.jsonl, so a second call goes on where the
# first stopped. Its docstring says what each phase measures.
#
# Once, here:  mkdir -p .devdata && cp ../shared/data/cifar-10-jpeg.tar.gz .devdata/   (.devdata/ is git-ignored)
# The call:    run(command="bash benchmarks/gpu_check.sh $OUT 540", carry=[".devdata"], timeout_s=600)
# After it:    cp <files_at>/results.jsonl benchmarks/results/gpu-session/results.jsonl, commit it, and read
#              python benchmarks/gpu_session.py report benchmarks/results/gpu-session/results.jsonl
# A second call: the same command with the seconds left (minus a minute) in place of 540.
# Usage: benchmarks/gpu_check.sh OUTDIR [TIME_LIMIT_S]; OUTDIR gets results.jsonl, session.log, tests.log, gpu.txt.
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUTDIR [TIME_LIMIT_S]}; limit=${2:-540}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
set -o pipefail
PYTHONUNBUFFERED=1 python3 benchmarks/gpu_session.py run --out "$out" --time-limit "$limit" \
    --tarball .devdata/cifar-10-jpeg.tar.gz --resume benchmarks/results/gpu-session/results.jsonl 2>&1 \
    | tee "$out/session.log"
