#!/bin/bash
# Evaluate a checkpoint on the val split (top-1 / top-5) with validate.py.
# With no arguments: the newest demo checkpoint (the newest *.ckpt under ./output/demo/, as python export.py picks it).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage:
  bash scripts/run_eval.sh
      evaluates the newest demo checkpoint with configs/demo/slab_deit_demo.yaml (training and deploy form)
  bash scripts/run_eval.sh -c CONFIG [-k CHECKPOINT] [-d DATA_DIR] [--deploy] [-- VALIDATE_PY_ARGS ...]
Options:
  -c, --config PATH      the recipe the model was trained with (model, model_kwargs, image_size, data keys)
  -k, --ckpt_file PATH   a train.py .ckpt or an official .pth (default: <ckpt_dir>/<model>.ckpt of the recipe)
  -d, --data_dir PATH    dataset root with val/<class>/* (default: the recipe's)
  --deploy               evaluate the re-parameterized (norm-folded) model
  -- ARGS                passed on to validate.py, e.g. -- --ckpt_ema --device_target Ascend
EOF
}

fail() {
    echo "error: $1" >&2
    echo >&2
    usage >&2
    exit 2
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export GLOG_v="${GLOG_v:-3}"

if [ $# -eq 0 ]; then
    # the newest checkpoint of a demo run, as python export.py picks it
    CKPT=$(python -c "from slab_ms.export import newest_checkpoint as n; print(n(['./output/demo']) or '')")
    [ -n "$CKPT" ] || fail "no demo checkpoint under ./output/demo/: run bash scripts/run_distribute_train.sh first"
    for FORM in --deploy=False --deploy=True; do
        python validate.py -c configs/demo/slab_deit_demo.yaml --ckpt_file "$CKPT" "$FORM"
    done
    exit 0
fi

CONFIG=""; CKPT=""; DATA_DIR=""; EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --deploy) EXTRA+=(--deploy); shift ;;
        -c|--config|-k|--ckpt_file|--ckpt_path|-d|--data_dir)
            [ $# -ge 2 ] || fail "$1 needs a value"
            case "$1" in
                -c|--config) CONFIG="$2" ;;
                -k|--ckpt_file|--ckpt_path) CKPT="$2" ;;
                -d|--data_dir) DATA_DIR="$2" ;;
            esac
            shift 2 ;;
        --) shift; EXTRA+=("$@"); break ;;
        *) fail "unknown argument '$1'" ;;
    esac
done
[ -n "$CONFIG" ] || fail "-c CONFIG is required"
[ -f "$CONFIG" ] || fail "config file not found: '$CONFIG'"
[ -z "$CKPT" ] || [ -f "$CKPT" ] || fail "checkpoint not found: '$CKPT'"
[ -z "$DATA_DIR" ] || [ -d "$DATA_DIR" ] || fail "data directory not found: '$DATA_DIR'"
ARGS=(-c "$CONFIG")
[ -z "$CKPT" ] || ARGS+=(--ckpt_file "$CKPT")
[ -z "$DATA_DIR" ] || ARGS+=(--data_dir "$DATA_DIR")
exec python validate.py "${ARGS[@]}" "${EXTRA[@]}"
