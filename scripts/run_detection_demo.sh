#!/usr/bin/env bash
# Dense prediction on 2 CPU cores: a CenterNet-style detector (FPN + heatmap head) on a PRepBN PVT backbone's
# multi-scale features, trained on scenes of scikit-learn digits; prints mAP, writes a picture of predictions
# and the folded detector as MindIR (checked after reloading) under ./output/detection/<date-time>/.
#   bash scripts/run_detection_demo.sh [--quick] [--model_kwargs '{"norm": "ln"}'] [...]
#   (python -m slab_ms.experiments.detection --help)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec python -m slab_ms.experiments.detection "$@"
