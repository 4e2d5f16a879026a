"""train.py end to end on a tiny generated ImageFolder: exact resume after SIGKILL, bad input, NaN stop,
BN re-calibration, recipes, fine-tuning that continues a checkpoint's γ schedule.

The tiny recipe (SLAB-DeiT, dim 32, depth 1, 32x32 images, patch 4) trains 3 epochs of 4 optimizer
steps (2 micro-batches of 8 each: gradient accumulation) with mixup/cutmix, random erasing, clipping,
EMA, a γ decay over half the run, checkpoints every 3 optimizer steps and at the end of epochs 2 and 3
(ckpt_save_interval 2, and the last epoch), then 1 BN re-calibration epoch.
"""
import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys

import types

import numpy as np
import mindspore as ms
import pytest
import yaml
from mindcv.loss import create_loss
from mindcv.utils.amp import auto_mixed_precision
from PIL import Image

import slab_ms
from slab_ms.layers import PRepBNSchedule
from slab_ms.models.registry import family_of
from slab_ms.training import ConfigError, GammaDecay, NetWithLoss, TrainStep, build_optimizer, param_groups, parse_args
from slab_ms.training.recalib import BNRecalibration
from slab_ms.training.outputs import MetricsLog
from slab_ms.training.prepbn_recipe import resolve_prepbn_schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, "train.py")
TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 4}
MODEL = "slab_deit_tiny"
TIMEOUT = 300


def _write_images(root, per_class, seed):
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", per_class // 4)):
        for c in range(4):
            folder = os.path.join(root, split, f"class{c}")
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                img = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
                img[:, :, c % 3] += np.uint8(120 + 40 * (c // 3))  # the class is the dominant colour
                Image.fromarray(img).save(os.path.join(folder, f"{i}.png"))


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    _write_images(str(root / "data"), 16, seed=0)
    cfg = {"model": MODEL, "model_kwargs": TINY, "data_dir": str(root / "data"), "image_size": 32,
           "batch_size": 8, "num_parallel_workers": 1, "check_images": False, "re_prob": 0.25, "mixup": 0.8,
           "cutmix": 1.0, "label_smoothing": 0.1, "epochs": 3, "warmup_epochs": 1, "lr": 1.0e-3,
           "warmup_lr": 1.0e-5, "min_lr": 1.0e-5, "accumulate_steps": 2, "clip_grad": 5.0, "ema": True,
           "ema_decay": 0.9, "prepbn_decay_ratio": 0.5, "bn_recalib_epochs": 1, "ckpt_interval": 3,
           "ckpt_save_interval": 2, "log_interval": 1, "runtime_num_threads": 2}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, str(path)


def _cmd(config, ckpt_dir, *extra):
    return [sys.executable, TRAIN_PY, "-c", config, "--ckpt_dir", str(ckpt_dir), *extra]


def _run(config, ckpt_dir, *extra):
    return subprocess.run(_cmd(config, ckpt_dir, *extra), capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT)


def _snapshot(folder, pattern="*"):
    return {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in sorted(glob.glob(f"{folder}/{pattern}"))}


def _assert_all_readable(folder, net):
    for path in glob.glob(f"{folder}/*.ckpt"):
        slab_ms.weights.load_checkpoint(net, path)  # strict: complete and for this model


def _tiny_net():
    return slab_ms.create_model(MODEL, num_classes=4, image_size=32, **TINY)


@pytest.fixture(scope="module")
def reference(recipe):
    """The uninterrupted run."""
    root, config = recipe
    result = _run(config, root / "ref")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "ref", result.stdout


def test_uninterrupted_run_logs_and_ends_with_gamma_zero(reference):
    ckpt_dir, stdout = reference
    lines = [line for line in stdout.splitlines() if line.startswith("epoch 3 step 4/4")]
    assert lines and all(k in lines[0] for k in ("loss", "γ 0.0000", "lr", "img/s", "ETA"))
    assert "γ schedule finished: step 12, γ = 0" in stdout
    assert "BN re-calibration epoch 1/1 done" in stdout and "final validation top-1:" in stdout
    final = ms.load_checkpoint(str(ckpt_dir / f"{MODEL}.ckpt"))
    assert int(final["prepbn_step"].asnumpy()) == 12 and int(final["prepbn_decay_steps"].asnumpy()) == 6
    assert any(k.startswith("ema.") for k in final)
    saved = [line.split("/")[-1] for line in stdout.splitlines() if line.startswith("saved checkpoint")]
    assert saved == [f"{MODEL}-{e:04d}_{s:06d}.ckpt" for e, s in ((0, 3), (1, 2), (2, 0), (2, 1), (3, 0), (4, 0))]
    rows = MetricsLog(str(ckpt_dir / f"{MODEL}-metrics.csv")).rows()
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and [r["gamma"] for r in rows] == ["0.333333", "0", "0"]
    assert all(r["top1"] == "" and float(r["loss"]) > 0 for r in rows)  # no validation while training


def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(recipe, reference):
    """Killed (SIGKILL) twice, resumed with --resume auto: final weights, EMA, BN statistics, optimizer
    state and γ step equal the uninterrupted run's (tolerance 1e-6 absolute; measured 0.0)."""
    root, config = recipe
    ckpt_dir = root / "killed"
    net = _tiny_net()
    kill_after = (f"saved checkpoint {ckpt_dir}/{MODEL}-0001_000002.ckpt",  # mid-epoch 2, then running on
                  "resumed from")                                        # during the resumed run's compile
    for index, marker in enumerate(kill_after):
        extra = ("--resume", "auto") if index else ()
        proc = subprocess.Popen(_cmd(config, ckpt_dir, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=ROOT)
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=TIMEOUT)
        assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
        _assert_all_readable(ckpt_dir, net)
        if index == 0:  # make the kill land right after that save even on a slow machine
            for path in glob.glob(f"{ckpt_dir}/{MODEL}-*.ckpt"):
                if os.path.basename(path) > f"{MODEL}-0001_000002.ckpt":
                    os.remove(path)
    assert not os.path.exists(ckpt_dir / f"{MODEL}.ckpt")
    result = _run(config, ckpt_dir, "--resume", "auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from '{ckpt_dir}/{MODEL}-0001_000002.ckpt': epoch 1, step 2" in result.stdout

    ref_dir, _ = reference
    ref_rows, rows = (MetricsLog(str(d / f"{MODEL}-metrics.csv")).rows() for d in (ref_dir, ckpt_dir))
    columns = ("epoch", "loss", "gamma", "lr")  # epoch 2's loss: its steps before and after the kill
    assert [[r[c] for c in columns] for r in rows] == [[r[c] for c in columns] for r in ref_rows]
    for name in (f"{MODEL}.ckpt", f"{MODEL}-0004_000000.ckpt"):  # final weights; last full training state
        ref, got = ms.load_checkpoint(str(ref_dir / name)), ms.load_checkpoint(str(ckpt_dir / name))
        assert sorted(ref) == sorted(got)
        worst = max(float(np.abs(ref[k].asnumpy().astype(np.float64) - got[k].asnumpy()).max()) for k in ref)
        assert worst <= 1e-6, worst


def test_finetune_continues_a_mid_schedule_checkpoint_and_resumes_exactly(recipe, tmp_path):
    """--checkpoint_path of weights at step 2 of T = 6 (γ = 2/3), one epoch of 4 optimizer steps: γ goes on
    to 0 (prepbn_step 2 -> 6) instead of restarting at 1 (tests/test_finetune.py observes γ in the graph).
    A run resumed from its step-2 checkpoint ends with the same weights (tolerance 1e-6; measured 0.0)."""
    _, config = recipe
    net = _tiny_net()
    PRepBNSchedule.require(net).set(step=2, decay_steps=6)
    weights = str(tmp_path / "mid.ckpt")
    ms.save_checkpoint(net, weights)
    extra = ["--ckpt_file", weights, "--epochs", "1", "--bn_recalib_epochs", "0", "--ckpt_interval", "2",
             "--val_split", "", "--ema", "false"]
    refused = _run(config, tmp_path / "refused", *extra)  # the recipe's prepbn_decay_ratio 0.5 means T = 2
    assert refused.returncode == 2 and "but the recipe asks for T = 2" in refused.stderr
    assert "--prepbn_schedule restart" in refused.stderr and not os.path.exists(tmp_path / "refused")

    extra += ["--prepbn_decay_ratio", "none"]
    full = _run(config, tmp_path / "full", *extra)
    assert full.returncode == 0, full.stderr[-3000:]
    assert (f"{weights}: weights loaded; prepbn_schedule continue: γ goes on from its step 2 (T=6, warm-up 0): "
            "γ = 0.6667 at the start, 0 after 4 of this run's 4 optimizer steps") in full.stdout
    gammas = [line.split(" γ ")[1].split()[0] for line in full.stdout.splitlines() if line.startswith("epoch 1 step")]
    assert gammas == ["0.5000", "0.3333", "0.1667", "0.0000"]  # γ after each optimizer step
    assert "γ schedule finished: step 6, γ = 0" in full.stdout

    resumed_dir = tmp_path / "resumed"
    os.makedirs(resumed_dir)
    shutil.copy(tmp_path / "full" / f"{MODEL}-0000_000002.ckpt", resumed_dir)
    resumed = _run(config, resumed_dir, *extra, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "γ goes on" not in resumed.stdout
    assert "γ schedule finished: step 6, γ = 0" in resumed.stdout
    ref, got = (ms.load_checkpoint(str(tmp_path / d / f"{MODEL}.ckpt")) for d in ("full", "resumed"))
    assert sorted(ref) == sorted(got) and int(got["prepbn_step"].asnumpy()) == 6
    worst = max(float(np.abs(ref[k].asnumpy().astype(np.float64) - got[k].asnumpy()).max()) for k in ref)
    assert worst <= 1e-6, worst


def test_unknown_yaml_key_is_one_clear_error(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model: slab_deit_tiny\ndata_dir: /nowhere\nlr: 1.0e-3\nwarmup_epoch: 5\n")
    result = _run(str(config), tmp_path / "ckpt")
    assert result.returncode == 2
    assert "unknown key 'warmup_epoch' (did you mean: warmup_epochs" in result.stderr
    assert not os.path.exists(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        config.write_text("lrr: 0.1\n")
        parse_args(["-c", str(config)])


def test_decay_longer_than_the_run_is_refused_before_anything_is_written(recipe, tmp_path):
    _, config = recipe
    result = _run(config, tmp_path / "ckpt", "--prepbn_decay_ratio", "none", "--prepbn_decay_steps", "60000")
    assert result.returncode == 2
    assert "the γ schedule is longer than the run: T = 60000" in result.stderr
    assert "> 12 optimizer steps" in result.stderr
    assert not os.path.exists(tmp_path / "ckpt")


def test_resume_from_another_model_is_refused_and_nothing_is_overwritten(recipe, reference, tmp_path):
    _, config = recipe
    ref_dir, _ = reference
    before = _snapshot(ref_dir)
    other = '{"embed_dim": 48, "depth": 1, "num_heads": 2, "patch_size": 4}'
    result = _run(config, ref_dir, "--model_kwargs", other, "--resume", str(ref_dir / f"{MODEL}-0003_000000.ckpt"))
    assert result.returncode == 2
    assert "does not fit VisionTransformer: is it for another model or another size?" in result.stderr
    assert "shape mismatch" in result.stderr
    fresh = _run(config, ref_dir)  # a new run into a folder holding a run: refused, not overwritten
    assert fresh.returncode == 2 and "--resume auto" in fresh.stderr
    assert _snapshot(ref_dir) == before


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(recipe, reference, tmp_path):
    _, config = recipe
    ref_dir, _ = reference
    ckpt_dir = tmp_path / "nan"
    os.makedirs(ckpt_dir)
    start = ckpt_dir / f"{MODEL}-0002_000001.ckpt"
    shutil.copy(ref_dir / start.name, start)
    before = _snapshot(ckpt_dir)
    result = _run(config, ckpt_dir, "--resume", "auto", "--lr", "1e30", "--warmup_lr", "1e30", "--min_lr", "1e30",
                  "--clip_grad", "none")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: non-finite" in result.stderr and "training stopped" in result.stderr
    assert f"the last good checkpoint is {start}" in result.stderr
    assert _snapshot(ckpt_dir, "*.ckpt") == before  # besides the run's options and its (empty) metrics table
    assert sorted(n for n in os.listdir(ckpt_dir) if not n.startswith(".")) == sorted(
        [start.name, f"{MODEL}-config.yaml", f"{MODEL}-metrics.csv"])


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml"))))
def test_released_recipes_parse_and_fit_their_schedule(path):
    """Every recipe parses, names a registered model and, on 8 devices with ImageNet-1k
    (1,281,167 images, drop_last), finishes its γ decay before training ends."""
    args = parse_args(["-c", path])
    assert args.model in slab_ms.list_models()
    if "demo" in path:
        return
    assert (args.opt, args.lr, args.weight_decay, args.scale_lr_batch, args.epochs) == ("adamw", 5e-4, 0.05, 512, 300)
    assert (args.mixup, args.cutmix, args.label_smoothing, args.re_prob, args.bn_recalib_epochs) == (0.8, 1.0, 0.1,
                                                                                                     0.25, 10)
    steps = (args.epochs + args.cooldown_epochs) * (1281167 // 8 // args.batch_size)
    assert args.prepbn_decay_steps is None  # a released model's T lives in its family's ARCHS only
    decay = _released_decay_steps(args.model)
    assert decay is None or decay <= steps


def _released_decay_steps(model):
    """T of a released model, from its family's ARCHS (None: no γ schedule)."""
    return family_of(model).ARCHS[model].get("prepbn_decay_steps")


def test_recipe_numbers_follow_the_reference():
    """A few rows of the paper recipes and the released T."""
    expect = {"deit/deit_tiny_prepbn": (128, 0, 20, 5.0, 0.0, None),
              "pvt/pvt_medium_prepbn": (128, 10, 5, 1.0, 0.3, 300000),
              "pvt/pvt_small_prepbn": (64, 10, 5, None, 0.1, 300000),
              "swin/slab_swin_small": (128, 0, 20, 5.0, 0.3, 60000),
              "cswin/slab_cswin_tiny": (256, 10, 20, None, 0.1, 120000)}
    for name, row in expect.items():
        args = parse_args(["-c", os.path.join(ROOT, "configs", f"{name}.yaml")])
        assert (args.batch_size, args.cooldown_epochs, args.warmup_epochs, args.clip_grad, args.drop_path_rate,
                _released_decay_steps(args.model)) == row, name


def test_weight_decay_groups_follow_the_reference():
    """As the reference: 1-D (biases, norms, RepBN alpha) and pos_embed undecayed; SLA positional encoding decayed."""
    decay, no_decay = (set(p.name for p in g["params"]) for g in param_groups(_tiny_net(), 0.05)[:2])
    assert {"blocks.0.norm1.norm2.alpha", "blocks.0.attn.qkv.bias", "pos_embed", "norm.norm1.gamma"} <= no_decay
    assert {"blocks.0.attn.positional_encoding", "blocks.0.attn.qkv.weight", "head.weight",
            "blocks.0.attn.dwc.weight"} <= decay


def test_bn_recalibration_updates_only_bn_statistics_in_inference_mode():
    """Weights, γ counters untouched; BN statistics re-estimated from the inference-mode network: the
    result does not depend on γ (PRepBN is pure RepBN) nor on chance (drop-path off)."""
    ms.set_seed(0)
    net = slab_ms.create_model(MODEL, num_classes=4, image_size=32, drop_path_rate=0.5, **TINY)
    PRepBNSchedule.require(net).set(step=0, decay_steps=10)  # γ = 1 if PRepBN were in training mode
    images = ms.Tensor(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32))
    before = {n: p.asnumpy().copy() for n, p in net.parameters_and_names()}
    recalib = BNRecalibration(net).prepare()
    recalib(images)
    after = {n: p.asnumpy().copy() for n, p in net.parameters_and_names()}
    stats = [n for n in before if "moving_" in n]
    assert stats and all(not np.array_equal(before[n], after[n]) for n in stats)
    assert all(np.array_equal(before[n], after[n]) for n in before if n not in stats)

    for name, param in net.parameters_and_names():  # again from the same state, with γ = 0 instead
        if name in stats:
            ms.ops.assign(param, ms.Tensor(before[name]))
    PRepBNSchedule.require(net).set(step=10)
    recalib.prepare()
    recalib(images)
    for name in stats:
        np.testing.assert_allclose(net.parameters_dict()[name].asnumpy(), after[name], atol=1e-6)
    assert PRepBNSchedule.require(net).state()["step"] == 10


def test_model_without_prepbn_has_no_schedule(recipe):
    _, config = recipe
    args = parse_args(["-c", config, "--model", "deit_tiny_prepbn"])
    net = slab_ms.create_model("deit_tiny_prepbn", num_classes=4, image_size=32, **TINY)
    with pytest.raises(ConfigError, match="has no PRepBN layers"):
        resolve_prepbn_schedule(net, args, 12)
    args.prepbn_decay_ratio = None
    assert resolve_prepbn_schedule(net, args, 12) is None


def test_amp_o2_with_loss_scale_matches_float32_and_an_overflow_step_is_skipped():
    """MindCV AMP (O2: fp16 except norms) + loss scale 1024: the loss is computed in float32, gradients are
    unscaled, parameters stay float32 with unchanged names; numbers within fp16 precision of O0.

    The O2 step has MindSpore's dynamic loss scale (DynamicLossScaleUpdateCell semantics, scale window 1): no
    overflow at 1024, so it computes what a fixed scale does and the scale doubles. Then 2^40 overflows the fp16
    backward: the step is skipped (weights, optimizer step = lr index, γ step and EMA unchanged) and the scale
    halves; at 1024 again the next step is applied and advances all of them."""
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.normal(size=(4, 3, 32, 32)).astype(np.float32))
    labels = ms.Tensor(np.arange(4, dtype=np.int32))
    opt_args = types.SimpleNamespace(opt="adamw", beta1=0.9, beta2=0.999, weight_decay=0.05, momentum=0.9)
    results = {}
    for level, scale in (("O0", 1.0), ("O2", 1024.0)):
        ms.set_seed(0)
        net = _tiny_net()
        names = [p.name for p in net.get_parameters()]
        auto_mixed_precision(net, level)
        optimizer = build_optimizer(net, opt_args, [1e-3] * 4)
        dynamic = dict(loss_scale_type="dynamic", scale_window=1, ema_decay=0.5) if level == "O2" else {}
        step = TrainStep(NetWithLoss(net, create_loss("CE")), optimizer, net, loss_scale=scale, **dynamic)
        step.set_train(True)
        loss, grad_norm = step(images, labels)
        assert loss.dtype == ms.float32 and [p.name for p in net.get_parameters()] == names
        assert all(p.dtype in (ms.float32, ms.int32) for p in net.get_parameters())
        results[level] = (float(loss.asnumpy()), float(grad_norm.asnumpy()), net.head.weight.asnumpy())
    assert results["O2"][0] != results["O0"][0]  # fp16 really ran
    np.testing.assert_allclose(results["O2"][:2], results["O0"][:2], rtol=2e-2)
    np.testing.assert_allclose(results["O2"][2], results["O0"][2], atol=1e-4)

    assert [p.name for p in step.state_parameters()] == ["train_step.loss_scale", "train_step.loss_scale_good_steps",
                                                         "train_step.skipped_steps"]
    assert step.loss_scale_state() == (2048.0, 0)

    def state():
        stats = np.concatenate([p.asnumpy().ravel() for p in net.get_parameters() if "moving_" in p.name])
        return (int(optimizer.global_step.asnumpy().reshape(())), PRepBNSchedule.require(net).state()["step"],
                net.head.weight.asnumpy().copy(), step.ema_float[0].asnumpy().copy(), stats)

    before = state()
    ms.ops.assign(step.loss_scale, ms.Tensor(2.0 ** 40, ms.float32))
    _, grad_norm = step(images, labels)
    after = state()
    assert not np.isfinite(float(grad_norm.asnumpy()))
    assert step.loss_scale_state() == (2.0 ** 39, 1)
    assert after[:2] == before[:2] == (1, 1)
    assert np.array_equal(after[2], before[2]) and np.array_equal(after[3], before[3])
    assert after[4].size and np.array_equal(after[4], before[4])  # the BN statistics its forward moved are put back

    ms.ops.assign(step.loss_scale, ms.Tensor(1024.0, ms.float32))
    _, grad_norm = step(images, labels)
    after = state()
    assert np.isfinite(float(grad_norm.asnumpy())) and step.loss_scale_state() == (2048.0, 1)
    assert after[:2] == (2, 2) and not np.array_equal(after[2], before[2]) and not np.array_equal(after[3], before[3])
    assert not np.array_equal(after[4], before[4])


def test_top_k_keeps_the_best_validated_checkpoints_and_the_newest_rebuilt_from_the_folder(tmp_path):
    """ckpt_save_policy top_k (MindCV: the keep_checkpoint_max of the best validation accuracy) plus the newest
    one (the resume point); the ranking is read back from the checkpoints' val_top1, so a resumed run keeps it."""
    from slab_ms.weights.checkpoint import save_checkpoint
    from slab_ms.weights.train_state import list_resumable, prune_checkpoints, read_val_top1, resumable_name
    top1 = {(1, 0): 0.50, (2, 0): 0.75, (2, 3): None, (3, 0): 0.60, (4, 0): 0.75, (5, 0): 0.40, (5, 2): None}
    for (epoch, step), acc in top1.items():
        extra = {"epoch_num": epoch, "step_num": step, **({"val_top1": acc} if acc is not None else {})}
        save_checkpoint([{"name": "w", "data": ms.Tensor(np.zeros(2, np.float32))}], tmp_path / resumable_name(
            "m", epoch, step), append_dict=extra)

    def name(epoch, step):
        return str(tmp_path / resumable_name("m", epoch, step))

    ranking = {path: read_val_top1(path) for _, _, path in list_resumable(str(tmp_path), "m")}  # as after a resume
    assert ranking[name(2, 0)] == 0.75 and ranking[name(2, 3)] is None
    deleted = prune_checkpoints(str(tmp_path), "m", 2, policy="top_k", top1=ranking)
    kept = [path for _, _, path in list_resumable(str(tmp_path), "m")]
    assert kept == [name(2, 0), name(4, 0), name(5, 2)]  # 0.75 twice (ties: both), then the newest
    assert sorted(deleted) == sorted(set(ranking) - set(kept))
    assert prune_checkpoints(str(tmp_path), "m", 1, policy=None) == []  # none: keep all
    prune_checkpoints(str(tmp_path), "m", 1, policy="latest_k", protect=[name(2, 0)])
    assert [path for _, _, path in list_resumable(str(tmp_path), "m")] == [name(2, 0), name(5, 2)]


def test_metrics_csv_keeps_each_epoch_once_across_a_resume(tmp_path):
    """A torn last line and the rows of epochs after the resume point are cut off, atomically; rows append."""
    log = MetricsLog(str(tmp_path / "m-metrics.csv"))
    log.restart(0)
    for epoch in (1, 2, 3):
        log.append(epoch, 1.5 - epoch / 10, 0.25 * epoch, None, 0.5, 1e-3, 120.0)
    with open(log.path, "a", encoding="utf-8") as f:
        f.write("4,1.1,0.9")  # a killed run's half-written row
    assert [r["epoch"] for r in log.rows()] == ["1", "2", "3"] and log.rows()[0]["top5"] == ""
    log.restart(2)  # resumed from the epoch-2 checkpoint: epoch 3 is trained again
    log.append(3, 1.2, 0.7, 0.9, 0.0, 5e-4, 100.0)
    rows = log.rows()
    assert [(r["epoch"], r["top1"], r["top5"], r["gamma"]) for r in rows] == [
        ("1", "0.25", "", "0.5"), ("2", "0.5", "", "0.5"), ("3", "0.7", "0.9", "0")]
    assert open(log.path, encoding="utf-8").read().startswith("epoch,loss,top1,top5,gamma,lr,img_per_s\n")


def test_cpu_graphs_run_on_the_calling_thread_and_pynative_keeps_mindspore_s_pipeline():
    # the caller's busy-wait on MindSpore's pipeline thread takes a core from a CPU run (cli.run_graphs_on_caller)
    from mindspore.graph.api import _pynative_executor as executor
    from slab_ms import cli

    def pipeline_off():  # disabling answers whether it already was; the state is then put back
        was_off = executor.disable_frontend_and_bprop_pipeline()
        if not was_off:
            executor.enable_frontend_and_bprop_pipeline()
        return was_off

    off_before = pipeline_off()  # an earlier test of this process may have run a tool's set_context
    executor.enable_frontend_and_bprop_pipeline()
    try:
        cli.set_context(types.SimpleNamespace(device_target="CPU", mode=1, runtime_num_threads=None))
        assert not pipeline_off()
        cli.set_context(types.SimpleNamespace(device_target="CPU", mode=0, runtime_num_threads=None))
        assert pipeline_off()
        executor.enable_frontend_and_bprop_pipeline()
        cli.cpu_graph_mode()
        assert pipeline_off() and ms.get_context("mode") == ms.GRAPH_MODE
    finally:
        if not off_before:
            executor.enable_frontend_and_bprop_pipeline()
        ms.set_context(mode=ms.GRAPH_MODE)


def test_device_target_defaults_to_the_best_available_and_an_unusable_one_is_one_error(recipe, tmp_path, capsys):
    from slab_ms import cli
    from slab_ms.train import main as train_main
    args = parse_args(["-c", recipe[1]])
    assert args.device_target is None
    assert cli.resolve_device(args, print_fn=print) == cli.available_devices()[0] == args.device_target
    assert f"device_target: {args.device_target} (the best available" in capsys.readouterr().out
    missing = [d for d in ("Ascend", "GPU") if d not in cli.available_devices()]
    if not missing:
        pytest.skip("this MindSpore can use every device")
    code = train_main(["-c", recipe[1], "--ckpt_dir", str(tmp_path / "ckpt"), "--device_target", missing[0]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("train.py: error:") == 1
    assert f"--device_target {missing[0]} is not usable with this MindSpore installation" in err
    assert not os.path.exists(tmp_path / "ckpt")


def test_loss_scale_state_is_saved_and_restored_with_the_training_checkpoint(tmp_path):
    """The dynamic scale, its good-step count and the skipped steps travel with a resumable checkpoint (the resume
    check counts optimizer steps + skipped steps); a checkpoint without them is refused for such a run."""
    from slab_ms.weights.train_state import load_train_checkpoint, save_train_checkpoint
    opt_args = types.SimpleNamespace(opt="adamw", beta1=0.9, beta2=0.999, weight_decay=0.05, momentum=0.9)

    def build(**kwargs):
        net = _tiny_net()
        optimizer = build_optimizer(net, opt_args, [1e-3] * 4)
        return net, optimizer, TrainStep(NetWithLoss(net, create_loss("CE")), optimizer, net, **kwargs)

    dynamic = dict(loss_scale=1024.0, loss_scale_type="dynamic", drop_overflow_update=True)
    net, optimizer, step = build(**dynamic)
    for param, value in zip(step.state_parameters(), (ms.Tensor(256.0, ms.float32), ms.Tensor(7, ms.int32),
                                                      ms.Tensor(3, ms.int32))):
        ms.ops.assign(param, value)
    path = save_train_checkpoint(str(tmp_path), MODEL, net, optimizer, step, 0, 3)
    net, optimizer, step = build(**dynamic)
    assert load_train_checkpoint(path, net, optimizer, step) == (0, 3)
    assert step.loss_scale_state() == (256.0, 3) and int(step.good_steps.asnumpy()) == 7
    plain = save_train_checkpoint(str(tmp_path), MODEL, *build()[:3], 0, 2)
    with pytest.raises(ValueError, match="holds no loss-scale state"):
        load_train_checkpoint(plain, *build(**dynamic))


def test_gamma_decay_warns_when_skipped_steps_leave_gamma_above_zero():
    """Skipped overflow steps advance neither the optimizer nor γ: a schedule as long as the run ends with γ > 0,
    which GammaDecay reports (with the count) instead of failing the run; with every step taken it checks γ = 0."""
    net = _tiny_net()
    schedule = PRepBNSchedule.require(net)
    schedule.set(step=7, decay_steps=8)
    optimizer = types.SimpleNamespace(global_step=ms.Tensor(np.array([7], np.int32)))
    lines = []
    GammaDecay(net, optimizer, total_steps=8, print_fn=lines.append, start_step=0,
                       in_graph=True).on_train_end()
    assert lines and "1 of the run's 8 optimizer steps were skipped" in lines[0] and "γ = 0.1250 at step 7" in lines[0]
    schedule.set(step=8)
    optimizer.global_step = ms.Tensor(np.array([8], np.int32))
    lines.clear()
    GammaDecay(net, optimizer, total_steps=8, print_fn=lines.append, start_step=0,
                       in_graph=True).on_train_end()
    assert lines == ["γ schedule finished: step 8, γ = 0 (the model is pure RepBN now)"]


def test_train_py_skips_overflow_steps_logs_them_and_stops_when_a_whole_epoch_overflows(recipe, tmp_path):
    """drop_overflow_update with a loss scale (2^40) that overflows every fp16 step at O2: each step is skipped and
    logged; the step-3 checkpoint holds data position 3 with 0 optimizer steps, γ step 0 and 3 skipped steps (what
    the resume check adds up); an epoch in which every step overflowed stops the run (exit 1)."""
    _, config = recipe
    ckpt_dir = tmp_path / "ckpt"
    result = _run(config, ckpt_dir, "--amp_level", "O2", "--loss_scale", str(2.0 ** 40), "--drop_overflow_update",
                  "True", "--epochs", "1", "--bn_recalib_epochs", "0", "--ema", "false", "--val_split", "",
                  "--prepbn_decay_ratio", "1.0")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    skips = [line for line in result.stdout.splitlines() if "gradient overflow at loss scale 1.09951e+12" in line]
    assert len(skips) == 4 and "epoch 1 optimizer step 1:" in skips[0]
    assert "1 optimizer step skipped (optimizer, lr, γ and EMA did not advance)" in skips[0]
    assert "every optimizer step of epoch 1 (4) overflowed and was skipped: training stopped" in result.stderr
    # each loss was finite (the overflow is in the scaled gradients): the newest checkpoint is good, as for
    # --resume auto
    assert f"the last good checkpoint is {ckpt_dir / f'{MODEL}-0000_000003.ckpt'}." in result.stderr
    saved = ms.load_checkpoint(str(ckpt_dir / f"{MODEL}-0000_000003.ckpt"))
    assert int(saved["global_step"].asnumpy().reshape(())) == 0 and int(saved["prepbn_step"].asnumpy()) == 0
    assert int(saved["train_step.skipped_steps"].asnumpy()) == 3 and int(saved["step_num"].asnumpy()) == 3
    assert not os.path.exists(ckpt_dir / f"{MODEL}.ckpt")
