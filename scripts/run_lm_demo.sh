#!/usr/bin/env bash
# PRepBN for language models on 2 CPU cores: a byte-level LLaMA trained on Python's own documentation with
# RMSNorm and with PRepBN; prints both validation perplexities and generation tokens/s.
#   bash scripts/run_lm_demo.sh [--quick] [--steps N] [...]   (python -m slab_ms.experiments.lm_demo --help)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec python -m slab_ms.experiments.lm_demo "$@"
