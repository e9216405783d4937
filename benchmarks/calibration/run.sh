#!/usr/bin/env bash
# The calibration of the default proxy reported in the README: 20 architectures of the default space within
# 4.5 GFLOPs, on full Fashion-MNIST and on CIFAR-10 (JPEG). Hours on 2 cores; each command continues from the
# results saved in its folder, so run this again (in another session too) until it prints its report.
# `fashion` and `cifar10` hold the results on the twelve-operator space (their folders refuse another space);
# `cifar10-catalog` recalibrates on the space with the whole catalog.
#   benchmarks/calibration/run.sh [fashion|cifar10|cifar10-catalog]...   (default: fashion and cifar10)
set -euo pipefail
cd "$(dirname "$0")/../.."
results=benchmarks/results/calibration
common=(--budget 4.5GFLOPs --space hybrid --archs 20 --seeds 2 --settings benchmarks/calibration/settings.yaml)
for what in "${@:-fashion cifar10}"; do
  for w in $what; do
    case "$w" in
      fashion)  # apt-get install -y dataset-fashion-mnist
        python -m nas.calibrate --out "$results/fashion-mnist" "${common[@]}" \
          --data-dir /usr/share/datasets/fashion-mnist ;;
      cifar10)  # the JPEG re-encoding in ../shared/data (see its README), extracted outside the project
        [ -d /work/data/train ] || { mkdir -p /work/data && tar -xzf ../shared/data/cifar-10-jpeg.tar.gz -C /work/data; }
        python -m nas.calibrate --out "$results/cifar10" "${common[@]}" --dataset imagefolder:/work/data/train ;;
      cifar10-catalog)  # its references (two seeds) were trained on an H100 by gpu_jobs.py, the rest here
        [ -d /work/data/train ] || { mkdir -p /work/data && tar -xzf ../shared/data/cifar-10-jpeg.tar.gz -C /work/data; }
        python -m nas.calibrate --out "$results/cifar10-catalog" "${common[@]}" --dataset imagefolder:/work/data/train \
          --reference-seeds 2 ;;
      *) echo "run.sh: unknown calibration '$w'; use fashion, cifar10 or cifar10-catalog" >&2; exit 2 ;;
    esac
  done
done
