#!/usr/bin/env bash
# Check a device: every model compiles, trains a few steps at AMP level O2, folds and exports MindIR; prints one
# table row per model (compile time, step time, max|Δ| deploy vs eval) and exits 1 if any model failed.
#   bash scripts/run_device_check.sh --device_target GPU|Ascend|CPU [--tiny] [--models a,b] [--steps 5] [...]
#   (python -m slab_ms.device_check --help)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export GLOG_v="${GLOG_v:-3}"
exec python -m slab_ms.device_check "$@"
