#!/bin/bash
# Data-parallel training of a SLAB model with msrun (one process per device, one or more nodes).
# With no arguments: the demo (embedded digits dataset, 2 CPU workers, a small SLAB-DeiT, a few minutes).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage:
  bash scripts/run_distribute_train.sh
      the demo: writes the digits dataset to ./data/digits, trains configs/demo/slab_deit_demo.yaml on
      2 CPU worker processes, prints progress and the validation accuracy; checkpoints in ./output/demo/<time>/
  bash scripts/run_distribute_train.sh -n DEVICES -c CONFIG [-d DATA_DIR] [-o OUTPUT_DIR]
                                       [--nodes K --master_addr ADDR --node_rank R] [--master_port PORT]
                                       [--dry_run] [-- TRAIN_PY_ARGS ...]
Options:
  -n, --device_num N     worker processes (devices) on this node
  -c, --config PATH      train.py recipe, e.g. configs/deit/slab_deit_tiny.yaml
  -d, --data_dir PATH    dataset root with train/<class>/* and val/<class>/* (default: the recipe's)
  -o, --output_dir PATH  checkpoints and msrun logs (default: ./output/<recipe name>)
  --nodes K              nodes in the job (default 1); K > 1 needs --master_addr and --node_rank
  --master_addr ADDR     address of node 0 (multi-node)
  --node_rank R          index of this node, 0 .. K-1 (multi-node; run the script on every node)
  --master_port PORT     the scheduler's port (default: a free port of this host, printed; with
                         --nodes K > 1: 8118); a port in use on this host is refused
  --dry_run              check the arguments, print the msrun command and exit
  -- ARGS                passed on to train.py, e.g. -- --device_target Ascend --epochs 100
Example (8 Ascend devices on each of 2 nodes; on node 1 pass --node_rank 1):
  bash scripts/run_distribute_train.sh -n 8 -c configs/deit/slab_deit_tiny.yaml -d /data/imagenet \
       --nodes 2 --master_addr 192.168.1.10 --node_rank 0 -- --device_target Ascend
EOF
}

fail() {
    echo "error: $1" >&2
    echo >&2
    usage >&2
    exit 2
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

# Whether a TCP port can be bound on this host (a listener holds it otherwise), and a port the kernel has free.
port_is_free() {
    python -c "import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('', int(sys.argv[1])))" "$1" \
        2>/dev/null
}
free_port() { python -c "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])"; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

if [ $# -eq 0 ]; then
    DEMO=1
    DEVICE_NUM=2
    CONFIG=configs/demo/slab_deit_demo.yaml
    DATA_DIR=./data/digits
    OUTPUT_DIR="./output/demo/$(date +%Y%m%d-%H%M%S)"
    NODES=1; MASTER_ADDR=""; NODE_RANK=""; MASTER_PORT=""
    TRAIN_ARGS=()
    DRY_RUN=0
else
    DEMO=0
    DEVICE_NUM=""; CONFIG=""; DATA_DIR=""; OUTPUT_DIR=""
    NODES=1; MASTER_ADDR=""; NODE_RANK=""; MASTER_PORT=""
    TRAIN_ARGS=()
    DRY_RUN=0
    while [ $# -gt 0 ]; do
        case "$1" in
            -h|--help) usage; exit 0 ;;
            --dry_run) DRY_RUN=1; shift ;;
            -n|--device_num|-c|--config|-d|--data_dir|-o|--output_dir|--nodes|--master_addr|--node_rank|--master_port)
                [ $# -ge 2 ] || fail "$1 needs a value"
                case "$1" in
                    -n|--device_num) DEVICE_NUM="$2" ;;
                    -c|--config) CONFIG="$2" ;;
                    -d|--data_dir) DATA_DIR="$2" ;;
                    -o|--output_dir) OUTPUT_DIR="$2" ;;
                    --nodes) NODES="$2" ;;
                    --master_addr) MASTER_ADDR="$2" ;;
                    --node_rank) NODE_RANK="$2" ;;
                    --master_port) MASTER_PORT="$2" ;;
                esac
                shift 2 ;;
            --) shift; TRAIN_ARGS=("$@"); break ;;
            *) fail "unknown argument '$1'" ;;
        esac
    done
    [ -n "$DEVICE_NUM" ] || fail "-n DEVICES is required"
    [ -n "$CONFIG" ] || fail "-c CONFIG is required"
    is_uint "$DEVICE_NUM" && [ "$DEVICE_NUM" -ge 1 ] || fail "-n needs a positive integer, got '$DEVICE_NUM'"
    is_uint "$NODES" && [ "$NODES" -ge 1 ] || fail "--nodes needs a positive integer, got '$NODES'"
    [ -z "$MASTER_PORT" ] || { is_uint "$MASTER_PORT" && [ "$MASTER_PORT" -ge 1 ] && [ "$MASTER_PORT" -le 65535 ]; } ||
        fail "--master_port needs a port number (1 .. 65535), got '$MASTER_PORT'"
    [ -f "$CONFIG" ] || fail "config file not found: '$CONFIG'"
    [ -z "$DATA_DIR" ] || [ -d "$DATA_DIR" ] || fail "data directory not found: '$DATA_DIR'"
    if [ "$NODES" -gt 1 ]; then
        [ -n "$MASTER_ADDR" ] || fail "--nodes $NODES needs --master_addr (the address of node 0)"
        [ -n "$NODE_RANK" ] || fail "--nodes $NODES needs --node_rank (0 .. $((NODES - 1)))"
        is_uint "$NODE_RANK" && [ "$NODE_RANK" -lt "$NODES" ] || fail "--node_rank must be 0 .. $((NODES - 1))"
    elif [ -n "$MASTER_ADDR$NODE_RANK" ]; then
        fail "--master_addr / --node_rank are for multi-node runs: also pass --nodes K (K > 1)"
    fi
    OUTPUT_DIR="${OUTPUT_DIR:-./output/$(basename "${CONFIG%.*}")}"
fi

# Two jobs on one host need two scheduler ports: a second msrun on a busy port would talk to the first's scheduler.
if [ -z "$MASTER_PORT" ] && [ "$NODES" -le 1 ]; then
    MASTER_PORT=$(free_port)
    echo "master port: $MASTER_PORT (free on this host; pass --master_port to choose one)"
elif [ -z "$MASTER_PORT" ]; then
    MASTER_PORT=8118
fi
if { [ "$NODES" -le 1 ] || [ "$NODE_RANK" = 0 ]; } && ! port_is_free "$MASTER_PORT"; then
    BUSY="--master_port $MASTER_PORT is in use on this host (another msrun job?)"
    fail "$BUSY; choose another port or leave --master_port out to use a free one"
fi

DATA_ARGS=()
[ -z "$DATA_DIR" ] || DATA_ARGS=(--data_dir "$DATA_DIR")
MULTI_NODE=()
[ "$NODES" -le 1 ] || MULTI_NODE=(--master_addr="$MASTER_ADDR" --node_rank="$NODE_RANK")
MSRUN=(msrun --worker_num=$((DEVICE_NUM * NODES)) --local_worker_num="$DEVICE_NUM" --master_port="$MASTER_PORT"
       "${MULTI_NODE[@]}" --log_dir="$OUTPUT_DIR/msrun_log" --join=True --tail_worker_log=0
       python train.py -c "$CONFIG" --distribute True "${DATA_ARGS[@]}" --ckpt_dir "$OUTPUT_DIR" "${TRAIN_ARGS[@]}")
if [ "$DRY_RUN" = 1 ]; then
    echo "${MSRUN[*]}"
    exit 0
fi

command -v msrun >/dev/null || { echo "error: msrun not found (it comes with MindSpore >= 2.3)" >&2; exit 2; }
export GLOG_v="${GLOG_v:-3}"  # MindSpore's C++ log: errors only, so the progress lines stay readable

if [ "$DEMO" = 1 ]; then
    echo "SLAB demo: slab_deit_tiny (shrunk) on the digits dataset, 2 CPU workers; recipe $CONFIG"
    python -c "from slab_ms.data import prepare_demo_dataset as p; print('dataset:', p('$DATA_DIR'))"
fi

mkdir -p "$OUTPUT_DIR"
echo "msrun: $((DEVICE_NUM * NODES)) workers ($DEVICE_NUM on this node), logs in $OUTPUT_DIR/msrun_log"
START=$(date +%s)
set +e
"${MSRUN[@]}"
STATUS=$?
set -e
echo "msrun finished with status $STATUS after $(( $(date +%s) - START )) s"
if [ "$STATUS" -ne 0 ]; then
    echo "error: training failed; see $OUTPUT_DIR/msrun_log/worker_*.log" >&2
    exit "$STATUS"
fi
if [ "$DEMO" = 1 ]; then
    EXPORT_ARGS=$(python -c "import json, yaml; r = yaml.safe_load(open('$CONFIG'))
print(f\"--image_size {r['image_size']} --model_kwargs '{json.dumps(r['model_kwargs'])}'\")")
    cat <<EOF
checkpoint: $OUTPUT_DIR/slab_deit_tiny.ckpt
next:  python validate.py -c $CONFIG --ckpt_file $OUTPUT_DIR/slab_deit_tiny.ckpt --deploy
       python export.py --ckpt_file $OUTPUT_DIR/slab_deit_tiny.ckpt $EXPORT_ARGS
EOF
fi
