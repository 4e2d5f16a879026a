#!/bin/bash
# Single-process training of a SLAB model. With no arguments: the demo recipe on one process.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage:
  bash scripts/run_standalone_train.sh
      the demo recipe (configs/demo/slab_deit_demo.yaml) on one process; checkpoints in ./output/demo_standalone/<time>/
  bash scripts/run_standalone_train.sh -c CONFIG [-d DATA_DIR] [-o OUTPUT_DIR] [-- TRAIN_PY_ARGS ...]
Options:
  -c, --config PATH      train.py recipe, e.g. configs/deit/slab_deit_tiny.yaml
  -d, --data_dir PATH    dataset root with train/<class>/* and val/<class>/* (default: the recipe's)
  -o, --output_dir PATH  checkpoints and the log (default: ./output/<recipe name>)
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

CONFIG=""; DATA_DIR=""; OUTPUT_DIR=""; TRAIN_ARGS=()
if [ $# -eq 0 ]; then
    CONFIG=configs/demo/slab_deit_demo.yaml
    OUTPUT_DIR="./output/demo_standalone/$(date +%Y%m%d-%H%M%S)"
    # one process may use both cores
    TRAIN_ARGS=(--runtime_num_threads 2)
fi
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
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
mkdir -p "$OUTPUT_DIR"
echo "training $CONFIG on one process; checkpoints and train.log in $OUTPUT_DIR"
python train.py -c "$CONFIG" "${DATA_ARGS[@]}" --ckpt_dir "$OUTPUT_DIR" "${TRAIN_ARGS[@]}" 2>&1 \
    | tee "$OUTPUT_DIR/train.log"
exit "${PIPESTATUS[0]}"
