#!/bin/bash
# Single-process training of a SLAB model. With no arguments: the demo recipe on one process.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage:
  bash scripts/run_standalone_train.sh [--dry_run]
      the demo recipe (configs/demo/slab_deit_demo.yaml) on one process at the 2-worker demo's global batch
      (64 = 2 x 32), so the same 440 optimizer steps; checkpoints in ./output/demo/<time>-standalone/
  bash scripts/run_standalone_train.sh -c CONFIG [-d DATA_DIR] [-o OUTPUT_DIR] [--dry_run] [-- TRAIN_PY_ARGS ...]
Options:
  -c, --config PATH      train.py recipe, e.g. configs/deit/slab_deit_tiny.yaml
  -d, --data_dir PATH    dataset root with train/<class>/* and val/<class>/* (default: the recipe's)
  -o, --output_dir PATH  checkpoints and the log (default: ./output/<recipe name>)
  --dry_run              check the arguments, print the train.py command and exit
  -- ARGS                passed on to train.py, e.g. -- --device_target GPU --resume auto
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

CONFIG=""; DATA_DIR=""; OUTPUT_DIR=""; TRAIN_ARGS=(); DRY_RUN=0
if [ $# -eq 0 ] || [ "$*" = "--dry_run" ]; then
    [ $# -eq 0 ] || DRY_RUN=1
    set --
    CONFIG=configs/demo/slab_deit_demo.yaml
    OUTPUT_DIR="./output/demo/$(date +%Y%m%d-%H%M%S)-standalone"
    # The demo's recipe trains 2 workers of 32 images per optimizer step: one process of 64 takes the same 440
    # steps over the same schedule (its BatchNorm statistics are per 64 images instead of per 32 on each rank).
    # One process may use both cores.
    TRAIN_ARGS=(--batch_size 64 --runtime_num_threads 2)
fi
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --dry_run) DRY_RUN=1; shift ;;
        -c|--config|-d|--data_dir|-o|--output_dir)
            [ $# -ge 2 ] || fail "$1 needs a value"
            case "$1" in
                -c|--config) CONFIG="$2" ;;
                -d|--data_dir) DATA_DIR="$2" ;;
                -o|--output_dir) OUTPUT_DIR="$2" ;;
            esac
            shift 2 ;;
        --) shift; TRAIN_ARGS=("$@"); break ;;
        *) fail "unknown argument '$1'" ;;
    esac
done
[ -n "$CONFIG" ] || fail "-c CONFIG is required"
[ -f "$CONFIG" ] || fail "config file not found: '$CONFIG'"
[ -z "$DATA_DIR" ] || [ -d "$DATA_DIR" ] || fail "data directory not found: '$DATA_DIR'"
OUTPUT_DIR="${OUTPUT_DIR:-./output/$(basename "${CONFIG%.*}")}"

export GLOG_v="${GLOG_v:-3}"  # MindSpore's C++ log: errors only, so the progress lines stay readable
DATA_ARGS=()
[ -z "$DATA_DIR" ] || DATA_ARGS=(--data_dir "$DATA_DIR")
TRAIN=(python train.py -c "$CONFIG" "${DATA_ARGS[@]}" --ckpt_dir "$OUTPUT_DIR" "${TRAIN_ARGS[@]}")
if [ "$DRY_RUN" = 1 ]; then
    echo "${TRAIN[*]}"
    exit 0
fi
mkdir -p "$OUTPUT_DIR"
echo "training $CONFIG on one process; checkpoints and train.log in $OUTPUT_DIR"
"${TRAIN[@]}" 2>&1 | tee "$OUTPUT_DIR/train.log"
exit "${PIPESTATUS[0]}"
