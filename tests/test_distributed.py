"""msrun data-parallel smoke run, the training scripts' argument handling, and train.py -> validate.py ->
export.py end to end, all on a tiny SLAB-DeiT and a generated ImageFolder."""
import glob
import json
import os
import re
import shlex
import socket
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
import yaml
from PIL import Image

from slab_ms.training.config import read_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 4}
MODEL = "slab_deit_tiny"
TIMEOUT = 300
ENV = dict(os.environ, GLOG_v="3")

# Runs train.py's Trainer under msrun and then saves THIS rank's weights, so that the ranks can be compared.
RANK_DUMP = """
import os, sys
sys.path.insert(0, {root!r})
import mindspore as ms
from slab_ms.training import Trainer, parse_options
trainer = Trainer(parse_options(sys.argv[1:]))
trainer.run()
ms.save_checkpoint(trainer.net, os.path.join(trainer.ckpt_dir, f"rank{{trainer.rank_id}}.weights.ckpt"))
"""


def write_image_folder(root, classes=4, train_per_class=12, val_per_class=4):
    """Colour-coded classes (the dominant channel and its strength), so a tiny model learns them in an epoch."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = os.path.join(root, split, f"class{c}")
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (24, 24, 3), dtype=np.uint8)
                pixels[:, :, c % 3] += np.uint8(120 + 60 * (c // 3))
                Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
    return root


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    write_image_folder(str(root / "data"))
    cfg = {"model": MODEL, "model_kwargs": TINY, "data_dir": str(root / "data"), "image_size": 16,
           "batch_size": 4, "num_parallel_workers": 1, "crop_pct": 1.0, "scale": [0.5, 1.0], "hflip": 0.0,
           "epochs": 2, "warmup_epochs": 0, "lr": 2.0e-3, "min_lr": 1.0e-4, "warmup_lr": 1.0e-4,
           "prepbn_decay_ratio": 1.0, "bn_recalib_epochs": 1, "log_interval": 1, "runtime_num_threads": 1,
           "val_while_train": False}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, str(path)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd, cwd=ROOT):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=ENV, timeout=TIMEOUT)


def test_msrun_two_workers_keep_identical_weights(recipe):
    root, config = recipe
    out = root / "msrun"
    out.mkdir()
    entry = out / "train_and_dump.py"
    entry.write_text(RANK_DUMP.format(root=ROOT))
    result = run(["msrun", "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
                  f"--log_dir={out / 'log'}", "--join=True", str(entry), "-c", config,
                  "--distribute", "True", "--ckpt_dir", str(out)], cwd=str(out))
    logs = {p: open(p).read() for p in glob.glob(str(out / "log" / "worker_*.log"))}
    assert result.returncode == 0, result.stdout[-2000:] + "".join(v[-2000:] for v in logs.values())
    log0 = logs[str(out / "log" / "worker_0.log")]
    # 48 train images / 2 ranks / batch 4 = 6 optimizer steps per epoch, each over 8 images
    assert "2 epochs × 6 optimizer steps (1 × 4 images per device × 2 devices per step)" in log0
    assert re.search(r"epoch 2 step 6/6 \(global 12/12\)", log0)

    rank0 = ms.load_checkpoint(str(out / "rank0.weights.ckpt"))
    rank1 = ms.load_checkpoint(str(out / "rank1.weights.ckpt"))
    final = ms.load_checkpoint(str(out / f"{MODEL}.ckpt"))
    assert sorted(rank0) == sorted(rank1) and len(rank0) > 20
    for name in rank0:  # bitwise: same averaged gradients; BN statistics averaged after re-calibration
        assert np.array_equal(rank0[name].asnumpy(), rank1[name].asnumpy()), name
        assert np.array_equal(rank0[name].asnumpy(), final[name].asnumpy()), name
    after_epoch1 = ms.load_checkpoint(str(out / f"{MODEL}-0001_000000.ckpt"))  # it did train: epoch 2 moved it
    assert not np.array_equal(after_epoch1["head.weight"].asnumpy(), final["head.weight"].asnumpy())


def test_train_validate_export_end_to_end(recipe):
    root, config = recipe
    ckpt_dir = root / "e2e"
    trained = run([sys.executable, "train.py", "-c", config, "--ckpt_dir", str(ckpt_dir), "--runtime_num_threads",
                   "2"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    train_top1 = float(re.search(r"final validation top-1: ([\d.]+)%", trained.stdout).group(1))
    assert train_top1 >= 75.0  # 4 colour-coded classes, chance 25%

    accuracies = []
    for deploy in ("False", "True"):
        validated = run([sys.executable, "validate.py", "-c", config, "--ckpt_dir", str(ckpt_dir), "--deploy",
                         deploy])
        assert validated.returncode == 0, validated.stderr[-3000:]
        match = re.search(r"top-1 ([\d.]+)%  top-5 n/a .*\((\d+) images, 4 classes", validated.stdout)
        assert match and match.group(2) == "16", validated.stdout
        accuracies.append(float(match.group(1)))
    assert accuracies == [train_top1, train_top1]  # validate.py agrees with train.py; folding keeps it

    exported = run([sys.executable, "export.py", "--ckpt_file", str(ckpt_dir / f"{MODEL}.ckpt"), "--image_size",
                    "16", "--model_kwargs", json.dumps(TINY), "--file_name", str(root / "e2e_model")])
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]
    assert os.path.getsize(root / "e2e_model.mindir") > 10000


def test_validate_bad_input_is_one_message(recipe, tmp_path):
    _, config = recipe
    missing = run([sys.executable, "validate.py", "-c", config, "--ckpt_file", str(tmp_path / "none.ckpt")])
    assert missing.returncode == 2 and missing.stderr.strip().startswith("validate.py: error: checkpoint not found")
    empty_val = tmp_path / "data"
    write_image_folder(str(empty_val), classes=2, train_per_class=1, val_per_class=1)
    os.remove(empty_val / "val" / "class1" / "0.png")
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    result = run([sys.executable, "validate.py", "-c", config, "--data_dir", str(empty_val), "--ckpt_file",
                  str(ckpt)])
    assert result.returncode == 2
    assert "error: 1 class folder(s)" in result.stderr and "class1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("script, args, message", [
    ("run_distribute_train.sh", ["-n", "two", "-c", "x.yaml"], "-n needs a positive integer, got 'two'"),
    ("run_distribute_train.sh", ["-n", "2"], "-c CONFIG is required"),
    ("run_distribute_train.sh", ["-n", "2", "-c", "configs/demo/slab_deit_demo.yaml", "--nodes", "2"],
     "--nodes 2 needs --master_addr"),
    ("run_distribute_train.sh", ["-n", "2", "-c", "configs/demo/slab_deit_demo.yaml", "--nodes", "2",
                                 "--master_addr", "10.0.0.1", "--node_rank", "2"], "--node_rank must be 0 .. 1"),
    ("run_distribute_train.sh", ["-n", "2", "-c", "no/such.yaml"], "config file not found: 'no/such.yaml'"),
    ("run_distribute_train.sh", ["--epochs", "3"], "unknown argument '--epochs'"),
    ("run_standalone_train.sh", ["-c", "configs/demo/slab_deit_demo.yaml", "-d", "/no/such/dir"],
     "data directory not found"),
    ("run_eval.sh", ["-k", "x.ckpt"], "-c CONFIG is required"),
])
def test_scripts_print_usage_on_bad_arguments(script, args, message):
    result = run(["bash", os.path.join("scripts", script), *args])
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {message}") and "Usage:" in result.stderr


def test_distribute_script_picks_a_free_master_port_and_refuses_a_busy_one():
    """Two jobs on one host must not share msrun's scheduler port: without --master_port a free one is
    picked and printed; a given port that a listener holds is refused with one message."""
    base = ["bash", os.path.join("scripts", "run_distribute_train.sh"), "-n", "2", "-c",
            os.path.join("configs", "demo", "slab_deit_demo.yaml"), "--dry_run"]
    result = run(base)
    assert result.returncode == 0, result.stderr
    port = int(result.stdout.split("master port: ")[1].split()[0])
    assert f"--master_port={port} " in result.stdout
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = run(base + ["--master_port", str(port)])
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: --master_port {port} is in use on this host")


@pytest.mark.parametrize("config", sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml"))))
def test_every_recipe_header_shows_a_command_that_works(config, tmp_path):
    """The 'bash scripts/...' line in each recipe's header comment parses (--dry_run: checked, not run) and
    trains that recipe; the recipe itself is a valid train.py recipe."""
    with open(config, encoding="utf-8") as f:
        header = [line[1:].strip() for line in f if line.startswith("#")]
    (command,) = [line[line.index("bash scripts/"):] for line in header if "bash scripts/" in line]
    args = shlex.split(command.replace("/path/to/imagenet", str(tmp_path)).split(" (")[0])
    if "--" in args:
        args.insert(args.index("--"), "--dry_run")
    elif len(args) > 2:
        args.append("--dry_run")
    else:  # the demo: no arguments
        assert os.path.relpath(config, ROOT) == os.path.join("configs", "demo", "slab_deit_demo.yaml")
        return
    result = run(args)
    assert result.returncode == 0, result.stderr
    assert f"python train.py -c {os.path.relpath(config, ROOT)} --distribute True" in result.stdout
    assert read_recipe(config)["model"] == os.path.splitext(os.path.basename(config))[0]


@pytest.mark.parametrize("readme", sorted(glob.glob(os.path.join(ROOT, "configs", "*", "README.md"))))
def test_family_readme_commands_are_accepted_by_their_tools(readme, tmp_path, monkeypatch):
    """Every command of a configs/<family>/README.md: scripts dry-run, the Python tools parse their arguments."""
    import importlib
    with open(readme, encoding="utf-8") as f:
        blocks = re.findall(r"```bash\n(.*?)```", f.read(), re.S)
    commands = [line for block in blocks for line in block.strip().splitlines()]
    assert len(commands) == 4
    monkeypatch.chdir(tmp_path)
    for command in commands:
        args = shlex.split(command.replace("/path/to/imagenet", str(tmp_path)))
        if args[0] == "bash":
            args.insert(args.index("--"), "--dry_run")
            assert run(args).returncode == 0, command
            continue
        module = args[2] if args[1] == "-m" else "slab_ms." + args[1][:-len(".py")]
        first = 3 if args[1] == "-m" else 2
        argv = [a.replace("configs/", os.path.join(ROOT, "configs") + "/") for a in args[first:]]
        for value in argv[argv.index("--ckpt_file") + 1:argv.index("--ckpt_file") + 2]:
            open(value, "wb").close()  # the checkpoint the command reads
        parsed = importlib.import_module(module).parse_args(argv)
        assert parsed.ckpt_file and (parsed.model or parsed.config), command
