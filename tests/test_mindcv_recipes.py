"""Two of MindCV's own recipes (tests/fixtures/mindcv_recipes, unmodified) train with train.py: only the model,
the data and the tiny-run sizes are given on the command line. Each MindCV key is accepted with MindCV's meaning
(asserted key by key) or refused by name with what to use instead.

The tiny model is deit_small_prepbn (PRepBN, softmax attention), so γ is checked under the recipes' dataset
sinking and AMP O2.
"""
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
import yaml
from PIL import Image

import slab_ms
from slab_ms.models import tiny_config
from slab_ms.training import ConfigError
from slab_ms.training.config import read_recipe
from slab_ms.training.outputs import METRICS_COLUMNS, MetricsLog
from slab_ms.weights import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, "train.py")
RECIPES = os.path.join(ROOT, "tests", "fixtures", "mindcv_recipes")
MODEL = "deit_small_prepbn"
TINY = '{"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 4}'

# What each key of the two recipes becomes in train.py (MindCV's meaning): option -> value after translation.
# Keys renamed: epoch_size -> epochs, image_resize -> image_size, ckpt_save_dir -> ckpt_dir, ckpt_path -> ckpt_file,
# cutmix_prob -> mixup_prob; dataset imagenet -> imagefolder (the same train/ val/ class folders); color_jitter
# [s, s, s] -> s; warmup_factor f -> warmup_lr = f·lr. Keys dropped because their value is what train.py does:
# dataset_download False, pretrained False, vflip 0, lr_epoch_stair False, use_nesterov False, weight_decay_filter
# norm_and_bias, val_amp_level equal to amp_level; decay_epochs = epoch_size - warmup_epochs (checked).
EXPECTED = {
    "swin_tiny_ascend": {
        "mode": 0, "distribute": True, "num_parallel_workers": 8, "val_while_train": True, "val_interval": 1,
        "dataset": "imagefolder", "data_dir": "/path/to/imagenet", "shuffle": True, "batch_size": 256,
        "drop_remainder": True, "image_size": 224, "scale": [0.08, 1.0], "ratio": [0.75, 1.333], "hflip": 0.5,
        "interpolation": "bicubic", "re_prob": 0.1, "mixup": 0.2, "cutmix": 1.0, "mixup_prob": 1.0,
        "crop_pct": 0.875, "color_jitter": 0.4, "auto_augment": "randaug-m7-mstd0.5", "model": "swin_tiny",
        "num_classes": 1000, "ckpt_file": "", "keep_checkpoint_max": 10, "ckpt_save_policy": "top_k",
        "ckpt_dir": "./ckpt", "epochs": 600, "dataset_sink_mode": True, "amp_level": "O2", "loss": "CE",
        "loss_scale": 1024.0, "label_smoothing": 0.1, "scheduler": "cosine_decay", "lr": 0.003, "min_lr": 1e-6,
        "warmup_epochs": 32, "opt": "adamw", "weight_decay": 0.025},
    "vit_b32_224_ascend": {
        "mode": 0, "distribute": True, "num_parallel_workers": 8, "val_while_train": True, "val_interval": 1,
        "dataset": "imagefolder", "data_dir": "/path/to/imagenet", "shuffle": True, "batch_size": 512,
        "image_size": 224, "scale": [0.08, 1.0], "ratio": [0.75, 1.333], "hflip": 0.5, "interpolation": "bicubic",
        "auto_augment": "randaug-m9-mstd0.5", "re_prob": 0.0, "cutmix": 1.0, "mixup_prob": 1.0, "mixup": 0.8,
        "model": "vit_b_32_224", "num_classes": 1000, "drop_rate": 0.1, "drop_path_rate": 0.1,
        "keep_checkpoint_max": 10, "ckpt_dir": "./ckpt", "ckpt_save_interval": 1, "ckpt_save_policy": "top_k",
        "epochs": 300, "dataset_sink_mode": True, "loss": "CE", "label_smoothing": 0.1, "scheduler": "cosine_decay",
        "lr": 1.6e-3, "min_lr": 0.0, "warmup_epochs": 30, "warmup_lr": pytest.approx(1.6e-5), "opt": "adamw",
        "weight_decay": 0.3, "amp_level": "O2", "loss_scale_type": "fixed", "loss_scale": 1024.0},
}
DROPPED = {"swin_tiny_ascend": {"dataset_download", "pretrained", "decay_epochs", "lr_epoch_stair", "use_nesterov"},
           "vit_b32_224_ascend": {"vflip", "decay_epochs", "warmup_factor", "weight_decay_filter", "val_amp_level",
                                  "use_nesterov"}}


EPOCHS_OPTION = {"swin_tiny_ascend": "--epoch_size", "vit_b32_224_ascend": "--epochs"}  # MindCV's name, ours


def _recipe(name):
    return os.path.join(RECIPES, f"{name}.yaml")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_key_of_the_recipe_is_read_with_mindcv_meaning(name):
    with open(_recipe(name), encoding="utf-8") as f:
        keys = set(yaml.safe_load(f))
    recipe = read_recipe(_recipe(name))
    assert recipe == EXPECTED[name]
    renamed = {"epoch_size", "image_resize", "ckpt_save_dir", "ckpt_path", "cutmix_prob"}
    assert keys - DROPPED[name] - renamed == set(EXPECTED[name]) - {"epochs", "image_size", "ckpt_dir", "ckpt_file",
                                                                  "mixup_prob", "warmup_lr"}


@pytest.mark.parametrize("change, message", [
    ("weight_decay_filter: disable", "'weight_decay_filter: disable' (MindCV) has no equivalent here: train.py "
                                     "excludes 1-D parameters and biases"),
    ("val_amp_level: O0", "'val_amp_level: O0' (MindCV): train.py validates the trained network at its amp_level"),
    ("loss_scale_type: auto", "key 'loss_scale_type' is 'auto'; choose one of fixed, dynamic"),
    ("color_jitter: [0.4, 0.2, 0.4]", "train.py takes one strength for brightness, contrast and saturation"),
    ("decay_epochs: 100", "train.py decays over epochs - warmup_epochs (270)"),
    ("use_nesterov: True", "'use_nesterov: True' (MindCV) has no equivalent here: remove it or set False"),
])
def test_a_mindcv_setting_train_py_does_not_have_is_refused_by_name(change, message, tmp_path):
    with open(_recipe("vit_b32_224_ascend"), encoding="utf-8") as f:
        text = f.read()
    key = change.split(":")[0]
    lines = [line for line in text.splitlines() if not line.startswith(f"{key}:")]
    path = tmp_path / "changed.yaml"
    path.write_text("\n".join(lines + [change]) + "\n")
    with pytest.raises(ConfigError) as err:
        read_recipe(str(path))
    assert message in str(err.value)


def test_distribute_without_a_launcher_is_one_line_and_mindcv_names_work_on_the_command_line(data, capsys):
    """The recipe's ``distribute: True`` in a process no launcher started: one line naming both ways out, exit 2;
    MindCV's ``--epoch_size`` and ``--image_resize`` are accepted on the command line as in the recipe."""
    from slab_ms.train import main
    from slab_ms.training import parse_args
    argv = ["-c", _recipe("swin_tiny_ascend"), "--model", MODEL, "--data_dir", data]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "bash scripts/run_distribute_train.sh" in err and "--distribute False" in err
    args = parse_args(argv + ["--distribute", "False", "--epoch_size", "3", "--image_resize", "64"])
    assert (args.epochs, args.image_size, args.distribute) == (3, 64, False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """5 classes (so top-5 is not trivially 100 %), 4 train and 1 val image each: 2 optimizer steps of 8."""
    root = tmp_path_factory.mktemp("mindcv_data")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 1)):
        for c in range(5):
            folder = root / split / f"class{c}"
            os.makedirs(folder)
            for i in range(count):
                img = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
                img[:, :, c % 3] += np.uint8(100 + 50 * (c // 3))
                Image.fromarray(img).save(folder / f"{i}.png")
    return str(root)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_recipe_trains_unmodified_except_the_model(name, data, tmp_path):
    """One epoch on the recipe as MindCV wrote it (dataset sinking, AMP O2 with loss scale 1024, top_k checkpoints,
    validation every epoch, mixup/cutmix, RandAugment): it finishes with γ = 0 at the optimizer step count (the
    recipe sinks: one host read for the epoch's 2 steps), writes the checkpoint, the resolved config and the
    metrics CSV."""
    ckpt_dir = tmp_path / "ckpt"
    cmd = [sys.executable, TRAIN_PY, "-c", _recipe(name), "--model", MODEL, "--model_kwargs", TINY,
           "--data_dir", data, "--ckpt_dir", str(ckpt_dir), "--distribute", "False", "--num_classes", "5",
           "--image_size", "32", "--batch_size", "8", EPOCHS_OPTION[name], "1", "--warmup_epochs", "0",
           "--num_parallel_workers", "1", "--check_images", "False", "--prepbn_decay_ratio", "1.0",
           "--runtime_num_threads", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    assert "device_target: CPU (the best available" in out
    assert "dataset_sink_mode: the optimizer steps between progress lines" in out
    assert [line for line in out.splitlines() if line.startswith("epoch 1 step")] == [
        line for line in out.splitlines() if line.startswith("epoch 1 step 2/2 (global 2/2)")]
    assert "γ schedule finished: step 2, γ = 0" in out

    final = ms.load_checkpoint(str(ckpt_dir / f"{MODEL}.ckpt"))
    assert int(final["prepbn_step"].asnumpy()) == 2 and int(final["prepbn_decay_steps"].asnumpy()) == 2
    # trained at O2, saved as float32 weights under the plain model's names: the strict loader (export.py's) takes it
    assert ms.float32 in {v.dtype for v in final.values()} and not {v.dtype for v in final.values()} & {
        ms.float16, ms.bfloat16}
    net = slab_ms.create_model(MODEL, num_classes=5, image_size=32, **json.loads(TINY))
    load_checkpoint(net, str(ckpt_dir / f"{MODEL}.ckpt"))
    epoch_ckpt = ms.load_checkpoint(str(ckpt_dir / f"{MODEL}-0001_000000.ckpt"))
    assert int(epoch_ckpt["global_step"].asnumpy().reshape(())) == 2
    assert 0.0 <= float(epoch_ckpt["val_top1"].asnumpy()) <= 1.0  # top_k ranks it by this

    config = read_recipe(str(ckpt_dir / f"{MODEL}-config.yaml"))  # the resolved options, readable by train.py -c
    assert (config["model"], config["epochs"], config["ckpt_save_policy"], config["dataset_sink_mode"],
            config["amp_level"], config["device_target"]) == (MODEL, 1, "top_k", True, "O2", "CPU")
    rows = MetricsLog(str(ckpt_dir / f"{MODEL}-metrics.csv")).rows()
    assert len(rows) == 1 and set(rows[0]) == set(METRICS_COLUMNS) and rows[0]["epoch"] == "1"
    assert float(rows[0]["top1"]) == pytest.approx(float(epoch_ckpt["val_top1"].asnumpy()), abs=1e-5)
    assert float(rows[0]["top1"]) <= float(rows[0]["top5"]) <= 1.0 and float(rows[0]["gamma"]) == 0.0
    assert float(rows[0]["loss"]) > 0 and float(rows[0]["img_per_s"]) > 0 and float(rows[0]["lr"]) >= 0


@pytest.mark.parametrize("model", ["slab_swin_tiny", "slab_pvt_tiny"])
def test_the_swin_recipe_trains_swin_and_pvt_models_under_its_amp_o2(model, data, tmp_path):
    """The README's MindCV-recipe command with another family: MindCV's swin_tiny_ascend.yaml runs AMP O2 with a
    fixed loss scale of 1024; SLA, the window softmax and PVT's patch convs compile in float16 and γ ends at 0."""
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in tiny_config(model).items()}
    size = config.pop("image_size")
    cmd = [sys.executable, TRAIN_PY, "-c", _recipe("swin_tiny_ascend"), "--model", model,
           "--model_kwargs", json.dumps(config), "--data_dir", data, "--ckpt_dir", str(tmp_path / "ckpt"),
           "--distribute", "False", "--num_classes", "5", "--image_size", str(size), "--batch_size", "8",
           "--epochs", "1", "--warmup_epochs", "0", "--num_parallel_workers", "1", "--check_images", "False",
           "--prepbn_decay_ratio", "1.0", "--runtime_num_threads", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "γ schedule finished: step 2, γ = 0" in result.stdout
    rows = MetricsLog(str(tmp_path / "ckpt" / f"{model}-metrics.csv")).rows()
    assert np.isfinite(float(rows[0]["loss"])) and float(rows[0]["gamma"]) == 0.0
