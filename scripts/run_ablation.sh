#!/usr/bin/env bash
# The paper's PRepBN (Table 7) and attention (Table 6) ablations at small scale on 2 CPU cores: one small DeiT
# trained with LayerNorm, BN, BN + progressive, RepBN, PRepBN, SLA without / with its depth-wise conv, 3 seeds each,
# on digit scenes; writes the CSV and PNG (default: a new output/ablation/<date-time>/) and prints the table.
#   bash scripts/run_ablation.sh --csv docs/ablation.csv --overwrite   # the README figures; or [--quick] [--seeds N] [--data_dir IMAGEFOLDER] [...]
#   (python -m slab_ms.experiments.ablation --help)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec nice -n 10 python -m slab_ms.experiments.ablation "$@"
