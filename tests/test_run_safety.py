"""No run loses another's results and every bad input is one message: the ckpt_dir run lock, the start-up
write probe, finite checkpoints after a NaN, file modes, stale temporaries, --resume auto past a torn
checkpoint, and exit status 2 with one line for bad options, recipes, data folders and input sizes."""
import errno
import glob
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import zipfile

import numpy as np
import mindspore as ms
import pytest
import yaml
from PIL import Image

import slab_ms
from slab_ms.convert import main as convert_main
from slab_ms.export import main as export_main
from slab_ms.train import main as train_main
from slab_ms.training import ConfigError, parse_args, parse_options
from slab_ms.training.prepbn_recipe import resolve_prepbn_schedule
from slab_ms.training import loop, run_safety
from slab_ms.utils import (FolderInUseError, OutputError, RunLock, atomic_output, check_writable_folder,
                           remove_stale_temporaries)
from slab_ms.weights import save_checkpoint
from slab_ms.validate import main as validate_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, "train.py")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "official_small_deit_prepbn.pth")
MODEL = "slab_deit_tiny"
TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 4}
TIMEOUT = 300


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """A 1-epoch run of 4 optimizer steps on 32x32 images (no validation, no BN re-calibration)."""
    root = tmp_path_factory.mktemp("safety")
    rng = np.random.default_rng(0)
    for c in range(2):
        folder = root / "data" / "train" / f"class{c}"
        os.makedirs(folder)
        for i in range(16):
            img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            img[:, :, c] += 120
            Image.fromarray(img).save(folder / f"{i}.png")
    cfg = {"model": MODEL, "model_kwargs": TINY, "data_dir": str(root / "data"), "image_size": 32, "batch_size": 8,
           "num_parallel_workers": 1, "check_images": False, "val_split": "", "epochs": 1, "warmup_epochs": 0,
           "lr": 1e-3, "min_lr": 1e-5, "prepbn_decay_steps": 2, "ckpt_interval": 1, "keep_checkpoint_max": 10,
           "log_interval": 1, "runtime_num_threads": 2}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, str(path)


def _run(config, ckpt_dir, *extra, cwd=ROOT):
    return subprocess.run([sys.executable, TRAIN_PY, "-c", config, "--ckpt_dir", str(ckpt_dir), *extra],
                          capture_output=True, text=True, cwd=cwd, timeout=TIMEOUT,
                          env={**os.environ, "PYTHONPATH": ROOT})


def _one_error(result, tool="train.py"):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines and lines[-1].startswith(f"{tool}: error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def trained(recipe):
    root, config = recipe
    result = _run(config, root / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


def _tiny_net():
    """A tiny model whose γ schedule has finished, as a trained checkpoint's (export refuses an unfinished one)."""
    net = slab_ms.create_model(MODEL, num_classes=2, image_size=32, **TINY)
    schedule = slab_ms.PRepBNSchedule.of(net)
    schedule.set(step=schedule.end_step())
    return net


# ------------------------------------------------------------------------------ 2: the run lock
def test_a_second_run_into_a_locked_ckpt_dir_exits_2_naming_the_holder(recipe, tmp_path):
    _, config = recipe
    ckpt_dir = tmp_path / "busy"
    os.makedirs(ckpt_dir)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from slab_ms.utils import RunLock; "
                               f"RunLock({str(ckpt_dir)!r}).acquire(); print('locked', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.time()
        line = _one_error(_run(config, ckpt_dir))
        assert f"is in use by another run (pid {holder.pid}" in line
        assert time.time() - start < 60  # at start, before data and model
        assert os.listdir(ckpt_dir) == [RunLock.NAME]
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}"):
            RunLock(ckpt_dir).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(ckpt_dir):  # the killed holder's lock file is left behind and blocks nothing
        assert open(ckpt_dir / RunLock.NAME).read().strip() == str(os.getpid())


# ------------------------------------------------------------------------------ 3: finite checkpoints
def test_checkpoint_whose_weights_give_a_nan_is_not_called_good_and_resume_skips_it(recipe, trained, tmp_path):
    """Resumed from the 1-epoch checkpoint with an absurd lr: step 5's update makes the weights huge (finite),
    its checkpoint is written, step 6's loss is NaN. The message names the step-4 checkpoint (finite weights,
    finite logits), the step-5 one is moved aside, and --resume auto then takes the good one. Also: the newest
    checkpoint torn (--resume auto warns and skips it), a killed writer's temporary file (removed), and a run
    resumed from the step-5 weights (they are moved aside as well)."""
    _, config = recipe
    ckpt_dir = tmp_path / "nan"
    os.makedirs(ckpt_dir)
    good = ckpt_dir / f"{MODEL}-0001_000000.ckpt"
    good.write_bytes((trained / good.name).read_bytes())
    torn = ckpt_dir / f"{MODEL}-0001_000003.ckpt"
    torn.write_bytes(good.read_bytes()[:5000])
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = ckpt_dir / f".{MODEL}-0001_000002.ckpt.slabtmp{dead.pid}.ckpt"
    stale.write_bytes(b"half a checkpoint")
    live = ckpt_dir / f".{MODEL}-0001_000002.ckpt.slabtmp{os.getpid()}.ckpt"
    live.write_bytes(b"a live writer's file")

    result = _run(config, ckpt_dir, "--epochs", "2", "--resume", "auto", "--lr", "1e30", "--min_lr", "1e30")
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"skipping '{torn}'" in result.stdout and "may be truncated" in result.stdout
    assert f"resumed from '{good}'" in result.stdout
    assert f"removed '{stale}'" in result.stdout and not stale.exists() and live.exists()
    assert "non-finite loss" in result.stderr and f"the last good checkpoint is {good}." in result.stderr
    bad = ckpt_dir / f"{MODEL}-0001_000001.ckpt"
    assert not bad.exists() and os.path.exists(f"{bad}.nonfinite")
    assert slab_ms.weights.train_state.find_latest(str(ckpt_dir), MODEL) in (str(torn), str(good))

    net = slab_ms.weights.load_checkpoint(_tiny_net(), str(good)).set_train(False)
    logits = net(ms.Tensor(np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32))).asnumpy()
    assert np.isfinite(logits).all()
    os.rename(f"{bad}.nonfinite", tmp_path / "bad.ckpt")
    huge = ms.load_checkpoint(str(tmp_path / "bad.ckpt"))["head.weight"].asnumpy()
    assert np.abs(huge).max() > 1e20  # what it would have called good before

    # a run resumed from those weights stops at its first loss, moves them aside too and names as the last good
    # checkpoint the one --resume auto takes next
    again = tmp_path / "again"
    os.makedirs(again)
    (again / good.name).write_bytes(good.read_bytes())
    resumed = again / bad.name
    os.rename(tmp_path / "bad.ckpt", resumed)
    result = _run(config, again, "--epochs", "2", "--resume", "auto")
    assert result.returncode == 1 and f"resumed from '{resumed}'" in result.stdout, result.stderr[-3000:]
    assert "non-finite loss" in result.stderr and f"the last good checkpoint is {again / good.name}." in result.stderr
    assert f"Moved aside, as no finite loss followed their weights: {resumed}.nonfinite." in result.stderr
    assert not resumed.exists() and slab_ms.weights.train_state.find_latest(str(again), MODEL) == str(again / good.name)


def test_non_finite_parameters_are_never_saved(recipe, trained, tmp_path):
    """lr 1e39 is inf in float32: the first update makes the weights NaN/inf; the checkpoint due right after
    it is refused before it is written."""
    _, config = recipe
    ckpt_dir = tmp_path / "inf"
    os.makedirs(ckpt_dir)
    good = ckpt_dir / f"{MODEL}-0001_000000.ckpt"
    good.write_bytes((trained / good.name).read_bytes())
    result = _run(config, ckpt_dir, "--epochs", "2", "--resume", "auto", "--lr", "1e39", "--min_lr", "1e39")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "non-finite parameters after optimizer step 5" in result.stderr and "not saved" in result.stderr
    assert f"the last good checkpoint is {good}." in result.stderr
    assert sorted(os.listdir(ckpt_dir)) == [RunLock.NAME, good.name, f"{MODEL}-config.yaml", f"{MODEL}-metrics.csv"]
    assert (ckpt_dir / f"{MODEL}-metrics.csv").read_text().count("\n") == 1  # the header: no epoch finished


# ------------------------------------------------------------------------------ 4: unwritable ckpt_dir
def test_ckpt_dir_through_a_file_is_one_message_at_start(recipe, tmp_path):
    _, config = recipe
    (tmp_path / "file").write_text("x")
    line = _one_error(_run(config, tmp_path / "file" / "ckpt"))
    assert "ckpt_dir" in line and "cannot be created" in line and "is a file" in line
    line = _one_error(_run(config, tmp_path / "file"))
    assert "exists and is not a folder" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_ckpt_dir_is_one_message_at_start(recipe, tmp_path):
    _, config = recipe
    folder = tmp_path / "ro"
    os.makedirs(folder)
    os.chmod(folder, 0o555)
    try:
        assert "is not writable" in _one_error(_run(config, folder))
    finally:
        os.chmod(folder, 0o755)


def test_probe_and_failed_start_leave_no_new_folder(recipe, tmp_path):
    """A run refused after the probe (here: an input size the patch does not divide) removes the ckpt_dir it
    created, and never reaches graph compilation (no rank_0/om/analyze_fail.ir in the working directory)."""
    _, config = recipe
    line = _one_error(_run(config, tmp_path / "new", "--image_size", "30", cwd=str(tmp_path)))
    assert "--image_size 30 does not fit VisionTransformer: it must be a multiple of 4" in line
    assert sorted(os.listdir(tmp_path)) == []


# ------------------------------------------------------------------------------ 5: permissions, overwrite
def test_written_files_get_the_usual_mode_and_export_keeps_the_folder_mode(tmp_path):
    old = os.umask(0o022)
    try:
        dst = tmp_path / "deit.ckpt"
        assert convert_main(["--model", "deit_small_prepbn", "--ckpt_file", FIXTURE, "--file_name", str(dst),
                             "--num_classes", "10", "--model_kwargs",
                             '{"image_size": 64, "embed_dim": 48, "depth": 2, "num_heads": 3}']) == 0
        assert stat.S_IMODE(os.stat(dst).st_mode) == 0o644
        with atomic_output(str(tmp_path / "x.ckpt"), suffix=".ckpt") as tmp:
            ms.save_checkpoint(_tiny_net(), tmp)  # MindSpore leaves it 0400
        assert stat.S_IMODE(os.stat(tmp_path / "x.ckpt").st_mode) == 0o644

        out = tmp_path / "out"
        os.makedirs(out, mode=0o755)
        os.chmod(out, 0o755)
        argv = ["--model", MODEL, "--ckpt_file", str(tmp_path / "x.ckpt"), "--num_classes", "2",
                "--image_size", "32", "--model_kwargs", json.dumps(TINY), "--file_format", "ONNX",
                "--file_name", str(out / "net")]
        pytest.importorskip("onnxruntime")
        assert export_main(argv) == 0
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
        assert stat.S_IMODE(os.stat(out / "net.onnx").st_mode) == 0o644
    finally:
        os.umask(old)


def test_export_refuses_to_overwrite_without_the_flag(tmp_path, capsys):
    ckpt = tmp_path / f"{MODEL}.ckpt"
    ms.save_checkpoint(_tiny_net(), str(ckpt))
    existing = tmp_path / "net.mindir"
    existing.write_bytes(b"keep me")
    argv = ["--ckpt_file", str(ckpt), "--num_classes", "2", "--image_size", "32", "--model_kwargs", json.dumps(TINY),
            "--file_name", str(tmp_path / "net")]
    assert export_main(argv) == 2
    assert "net.mindir' exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me"
    assert export_main(argv + ["--overwrite"]) == 0
    assert existing.read_bytes() != b"keep me"
    assert stat.S_IMODE(os.stat(existing).st_mode) == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------ 6: one message, exit 2
@pytest.mark.parametrize("option, value, message", [
    ("--batch_size", "-1", "batch_size must be in [1, 65536], got -1"),
    ("--val_batch_size", "100000000", "val_batch_size must be in [1, 65536], got 100000000"),
    ("--image_size", "100000", "image_size must be in [1, 8192], got 100000"),
    ("--epochs", "1000000000000", "epochs must be in [1, 100000], got 1000000000000"),
    ("--warmup_epochs", "1e308", "warmup_epochs must be in [0, 100000], got 1e+308"),
    ("--val_interval", "0", "val_interval must be >= 1, got 0"),
    ("--lr", "nan", "lr must be >= 0, got nan"),
    ("--mixup_prob", "1.5", "mixup_prob must be in [0, 1], got 1.5"),
    ("--num_parallel_workers", "0", "num_parallel_workers must be >= 1"),
])
def test_numeric_options_out_of_range_are_refused_at_parse_time(recipe, option, value, message, capsys):
    _, config = recipe
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_args(["-c", config, option, value])
    assert train_main(["-c", config, option, value]) == 2
    assert validate_main(["-c", config, option, value]) == 2
    err = capsys.readouterr().err
    assert f"train.py: error: {message}" in err and f"validate.py: error: {message}" in err


def test_invalid_yaml_is_one_message_in_train_and_validate(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\nlr: 1\n")
    assert train_main(["-c", str(bad)]) == 2 and validate_main(["-c", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("not a readable yaml recipe" in line for line in err)


def test_digits_into_a_foreign_folder_is_one_message(recipe, tmp_path):
    _, config = recipe
    data = tmp_path / "mine"
    os.makedirs(data)
    (data / "notes.txt").write_text("my files")
    line = _one_error(_run(config, tmp_path / "ckpt", "--dataset", "digits", "--data_dir", str(data)))
    assert "is not the digits demo dataset" in line
    assert os.listdir(data) == ["notes.txt"] and not os.path.exists(tmp_path / "ckpt")


def test_onnx_export_without_onnxruntime_is_one_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    ckpt = tmp_path / f"{MODEL}.ckpt"
    ckpt.write_bytes(b"unused")
    assert export_main(["--ckpt_file", str(ckpt), "--file_format", "ONNX", "--file_name", str(tmp_path / "n")]) == 2
    assert "pip install onnxruntime" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == [ckpt.name]


def test_image_size_the_patch_does_not_divide_is_one_message_in_export_and_validate(recipe, tmp_path, capsys):
    root, config = recipe
    ckpt = tmp_path / f"{MODEL}.ckpt"
    ms.save_checkpoint(_tiny_net(), str(ckpt))
    assert export_main(["--ckpt_file", str(ckpt), "--num_classes", "2", "--image_size", "30", "--model_kwargs",
                        json.dumps(TINY), "--file_name", str(tmp_path / "net")]) == 2
    assert validate_main(["-c", config, "--ckpt_file", str(ckpt), "--image_size", "30", "--val_split", "train"]) == 2
    err = capsys.readouterr().err
    assert err.count("--image_size 30 does not fit VisionTransformer: it must be a multiple of 4") == 2
    assert not glob.glob(str(tmp_path / "net*"))


def test_garbage_data_pkl_is_one_message_in_convert_export_and_train(recipe, tmp_path, capsys):
    _, config = recipe
    garbage = tmp_path / "garbage.pth"
    with zipfile.ZipFile(garbage, "w") as archive:
        # seeded: unseeded bytes reach a refused opcode now and then, which is "not a safe checkpoint"
        archive.writestr("archive/data.pkl", np.random.default_rng(0).bytes(256))
    assert convert_main(["--model", MODEL, "--ckpt_file", str(garbage), "--file_name", str(tmp_path / "o.ckpt")]) == 2
    assert export_main(["--model", MODEL, "--ckpt_file", str(garbage), "--file_name", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("is not a readable PyTorch checkpoint" in line for line in err), err
    line = _one_error(_run(config, tmp_path / "ckpt", "--ckpt_file", str(garbage)))
    assert "is not a readable PyTorch checkpoint" in line and not os.path.exists(tmp_path / "ckpt")


def test_crafted_ckpt_to_resume_is_one_message_not_a_crash(recipe, trained, tmp_path):
    """A resumable checkpoint whose head.weight record claims more elements than its bytes (MindSpore's loader
    converted it without a check and corrupted the heap): train.py --resume is exit 2 naming the tensor."""
    from mindspore.train.checkpoint_pb2 import Checkpoint  # pylint: disable=import-outside-toplevel
    _, config = recipe
    name = f"{MODEL}-0001_000000.ckpt"
    proto = Checkpoint()
    proto.ParseFromString((trained / name).read_bytes())
    head = next(v for v in proto.value if v.tag == "head.weight")
    head.tensor.tensor_content = head.tensor.tensor_content[:8]
    crafted = tmp_path / name
    crafted.write_bytes(proto.SerializeToString())
    line = _one_error(_run(config, tmp_path / "ckpt", "--resume", str(crafted)))
    assert "tensor 'head.weight' of shape (2, 32) and type Float32 needs 256 bytes, the file holds 8" in line


def test_convert_into_an_existing_folder_is_one_message(tmp_path, capsys):
    assert convert_main(["--model", MODEL, "--ckpt_file", FIXTURE, "--file_name", str(tmp_path)]) == 2
    assert "is a folder; give the path of the .ckpt to write" in capsys.readouterr().err


# ------------------------------------------------------------------------------ 7: leftovers and words
def test_stale_temporaries_of_dead_processes_only_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [tmp_path / f".m.ckpt.slabtmp{dead.pid}.ckpt", tmp_path / f".net.mindir.slabtmp{dead.pid}.mindir",
             tmp_path / f".m.ckpt.slabtmp{dead.pid}.tmp",  # MindSpore's own name while it writes ours
             tmp_path / f".write_probe.slabtmp{dead.pid}"]
    # another program's temporaries (a dead pid in the same pattern without this package's marker) are not ours
    keep = [tmp_path / f".m.ckpt.slabtmp{os.getpid()}.ckpt", tmp_path / "m.ckpt", tmp_path / f"m.tmp{dead.pid}",
            tmp_path / f".thesis.tex.tmp{dead.pid}", tmp_path / f".notes.tmp{dead.pid}.txt"]
    for path in stale + keep:
        path.write_text("x")
    assert sorted(remove_stale_temporaries(str(tmp_path))) == sorted(map(str, stale))
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_warmup_longer_than_the_run_gives_a_fix_that_can_be_applied(recipe):
    _, config = recipe
    net = _tiny_net()
    for warmup, fix in ((20, "Set prepbn_warmup_steps < 12."),
                        (11, "Set prepbn_decay_steps <= 1 or prepbn_decay_ratio <= 0.083."),
                        (3, "Set prepbn_decay_steps <= 9 or prepbn_decay_ratio <= 0.75.")):
        args = parse_args(["-c", config, "--prepbn_warmup_steps", str(warmup), "--prepbn_decay_steps", "10"])
        with pytest.raises(ConfigError) as err:
            resolve_prepbn_schedule(net, args, 12)
        assert fix in str(err.value) and "<= -" not in str(err.value), str(err.value)


# ------------------------------------------------------------------------------ 8: races and full disks
def test_the_run_that_loses_the_lock_removes_nothing(recipe, tmp_path, monkeypatch):
    """Two runs start into one new folder: the one that made the folder may lose the lock to the other.
    The loser leaves the folder and the winner's lock file alone (removing them would let a third run in)."""
    _, config = recipe
    ckpt_dir = tmp_path / "shared"
    os.makedirs(ckpt_dir)
    monkeypatch.setattr(run_safety, "check_writable_folder", lambda *args, **kwargs: True)  # "this run made the folder"
    with RunLock(ckpt_dir) as winner:
        with pytest.raises(FolderInUseError, match=f"pid {os.getpid()}"):
            loop.Trainer(parse_options(["-c", config, "--ckpt_dir", str(ckpt_dir)]))
        assert os.listdir(ckpt_dir) == [RunLock.NAME] and winner._is_current(winner.fd)


def test_a_lock_on_a_removed_lock_file_does_not_count(tmp_path):
    """A run that locks the file a failed start has just removed (with its folder) opens the path again,
    so two runs never both hold "the" lock."""
    folder = tmp_path / "run"
    os.makedirs(folder)
    first = RunLock(folder).acquire()
    stale_fd = os.open(first.path, os.O_RDWR)  # a second run opened the file before the first removed it
    first.remove_folder()
    assert not folder.exists()
    os.makedirs(folder)
    second = RunLock(folder)
    second.fd = stale_fd
    assert not second._is_current(stale_fd)
    with RunLock(folder) as third:  # the path's new lock file: the stale descriptor locks nothing that counts
        assert third._is_current(third.fd)
    os.close(stale_fd)


def test_two_writers_of_one_name_without_overwrite_one_wins(tmp_path):
    """The name is taken in one step when the file is published (a hard link), not checked first: a file
    that appears while the export runs is kept, and the second writer fails with one message."""
    target = tmp_path / "net.mindir"
    with pytest.raises(OutputError, match="net.mindir' exists; pass --overwrite"):
        with atomic_output(str(target), suffix=".mindir", overwrite=False) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("mine")
            target.write_text("the other export's")
    assert target.read_text() == "the other export's" and os.listdir(tmp_path) == ["net.mindir"]
    with atomic_output(str(tmp_path / "new.mindir"), suffix=".mindir", overwrite=False) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("new")
    assert sorted(os.listdir(tmp_path)) == ["net.mindir", "new.mindir"]


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_one_message_and_keeps_every_file(tmp_path, monkeypatch):
    """Checkpoint, config and metrics writes that hit ENOSPC raise OutputError (one message, exit 2 in every
    tool) and leave the previous file as it was, with no temporary behind; so does the writability probe."""
    path = tmp_path / f"{MODEL}.ckpt"
    save_checkpoint(_tiny_net(), str(path))
    before = path.read_bytes()

    def half_then_full(net, name, **kwargs):
        with open(name, "wb") as f:
            f.write(b"half")
        _disk_full()
    monkeypatch.setattr(ms, "save_checkpoint", half_then_full)
    with pytest.raises(OutputError, match=f"cannot write '{path}': No space left on device"):
        save_checkpoint(_tiny_net(), str(path))
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]

    config_path = tmp_path / "run-config.yaml"
    # its temporary name, pointed at the kernel's always-full device: a real ENOSPC on write
    os.symlink("/dev/full", tmp_path / f".{config_path.name}.slabtmp{os.getpid()}")
    with pytest.raises(OutputError, match="run-config.yaml': No space left on device"):
        slab_ms.training.outputs.save_config(str(config_path), parse_options(["--model", MODEL, "--data_dir", "."]))
    assert os.listdir(tmp_path) == [path.name]
    metrics = slab_ms.training.outputs.MetricsLog(str(tmp_path / "metrics.csv"))
    os.symlink("/dev/full", metrics.path)
    with pytest.raises(OutputError, match="metrics.csv': No space left on device"):
        metrics.append(1, 0.5, None, None, 0.0, 1e-3, 10.0)
    os.remove(metrics.path)

    monkeypatch.setattr(os, "write", _disk_full)
    with pytest.raises(ValueError, match="is not writable: No space left on device"):
        check_writable_folder(str(tmp_path), "ckpt_dir")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [path.name]  # no .write_probe.slabtmp<pid> left behind


def test_convert_refuses_an_existing_file_a_long_name_and_a_full_disk(tmp_path, monkeypatch, capsys):
    argv = ["--model", "deit_small_prepbn", "--ckpt_file", FIXTURE, "--num_classes", "10", "--model_kwargs",
            '{"image_size": 64, "embed_dim": 48, "depth": 2, "num_heads": 3}']
    existing = tmp_path / "mine.ckpt"
    existing.write_bytes(b"keep me")
    assert convert_main(argv + ["--file_name", str(existing)]) == 2
    assert "mine.ckpt' exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me"
    long_name = tmp_path / ("a" * 240 + ".ckpt")  # 245 bytes: fits, its temporary name (266) would not
    assert convert_main(argv + ["--file_name", str(long_name)]) == 2
    err = capsys.readouterr().err
    assert "--file_name 'aaa" in err and "is 245 bytes long; at most 234 fit here" in err and "Traceback" not in err
    monkeypatch.setattr(ms, "save_checkpoint", _disk_full)
    assert convert_main(argv + ["--file_name", str(existing), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"convert.py: error: cannot write '{existing}': No space left on device"), err
    assert existing.read_bytes() == b"keep me" and os.listdir(tmp_path) == [existing.name]
    monkeypatch.undo()
    assert convert_main(argv + ["--file_name", str(tmp_path / "new") + os.sep]) == 2
    assert "is a folder; give the path of the .ckpt to write" in capsys.readouterr().err
    new_folder = tmp_path / "new"
    assert convert_main(["--model", MODEL, "--ckpt_file", FIXTURE, "--file_name", str(new_folder / "o.ckpt")]) == 2
    assert "does not fit" in capsys.readouterr().err and os.listdir(tmp_path) == [existing.name]  # no new folder left


def test_convert_into_a_read_only_folder_is_one_message(tmp_path, monkeypatch, capsys):
    """A folder on a read-only mount (EROFS from the kernel, simulated: root may write into a chmod 0555 one)."""
    folder = tmp_path / "ro"
    os.makedirs(folder)
    real_open = os.open

    def read_only_mount(path, flags, *args, **kwargs):
        if str(path).startswith(str(folder)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", read_only_mount)
    assert convert_main(["--model", MODEL, "--ckpt_file", FIXTURE, "--file_name", str(folder / "o.ckpt")]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"convert.py: error: the folder of --file_name '{folder}' is not writable: Read-only file system. "
                   "Choose another folder or fix its permissions (nothing was written)."]
    assert os.listdir(folder) == []


def test_export_refuses_a_folder_name_and_a_long_name_before_building(tmp_path, capsys):
    ckpt = tmp_path / f"{MODEL}.ckpt"
    ms.save_checkpoint(_tiny_net(), str(ckpt))
    argv = ["--ckpt_file", str(ckpt), "--num_classes", "2", "--image_size", "32", "--model_kwargs", json.dumps(TINY)]
    assert export_main(argv + ["--file_name", str(tmp_path) + os.sep]) == 2
    assert "is a folder; give the path of the file to write" in capsys.readouterr().err
    assert export_main(argv + ["--file_name", str(tmp_path / ("n" * 240))]) == 2
    assert "is 247 bytes long; at most 232 fit here" in capsys.readouterr().err
    assert os.listdir(tmp_path) == [ckpt.name]


def test_export_finds_the_newest_checkpoint_past_symlink_loops(tmp_path, monkeypatch):
    """Without --ckpt_file, export searches ./output: symlinked folders (here two loops) are not entered."""
    from slab_ms.export import newest_checkpoint
    output = tmp_path / "output"
    os.makedirs(output / "run")
    (output / "run" / f"{MODEL}.ckpt").write_bytes(b"x")
    os.symlink(output, output / "run" / "loop")
    os.symlink(output / "run", output / "again")
    signal.signal(signal.SIGALRM, _disk_full)  # a search that followed the loops would never end
    signal.alarm(20)
    try:
        assert newest_checkpoint([str(output)]) == str(output / "run" / f"{MODEL}.ckpt")
    finally:
        signal.alarm(0)


# ------------------------------------------------------------------------------ 9: signals
@pytest.mark.parametrize("signum, after", [
    (signal.SIGINT, "device_target:"),  # while data and model are built
    (signal.SIGTERM, f"training {MODEL}:"),  # at graph compilation
    (signal.SIGINT, "epoch 1 step 2/"),  # mid-run; then the printed command resumes the run
])
def test_a_signal_stops_training_with_one_line_naming_the_checkpoint_and_the_resume_command(recipe, tmp_path, signum,
                                                                                           after):
    """Exit 130 / 143 and no traceback. While a MindSpore graph runs, MindSpore's own SIGINT handler passes
    SIGINT on as SIGTERM (143), which the message then names."""
    _, config = recipe
    ckpt_dir = tmp_path / "run"
    argv = ["-c", config, "--ckpt_dir", str(ckpt_dir), "--epochs", "2"]
    proc = subprocess.Popen([sys.executable, TRAIN_PY, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    for line in proc.stdout:
        if line.startswith(after):
            proc.send_signal(signum)
            break
    _, err = proc.communicate(timeout=TIMEOUT)
    allowed = {signal.SIGINT: (130, 143), signal.SIGTERM: (143,)}[signum] if "step" in after else (128 + signum,)
    assert proc.returncode in allowed and "Traceback" not in err, err[-3000:]
    latest = slab_ms.weights.train_state.find_latest(str(ckpt_dir), MODEL)
    where = f"the last checkpoint is {latest}" if latest else "no checkpoint was written yet"
    command = f"python train.py {' '.join(argv)} --resume auto"
    name = signal.Signals(proc.returncode - 128).name
    assert err.strip().splitlines()[-1] == f"train.py: interrupted by {name}: {where}; continue with: {command}"
    if "step" in after:
        assert latest is not None
        result = subprocess.run([sys.executable, TRAIN_PY, *command.split()[2:]], capture_output=True, text=True,
                                cwd=ROOT, timeout=TIMEOUT, env={**os.environ, "PYTHONPATH": ROOT})
        assert result.returncode == 0 and f"resumed from '{latest}'" in result.stdout, result.stderr[-3000:]


def test_a_signal_while_a_checkpoint_is_written_stops_the_run_after_it(capsys):
    from slab_ms import cli
    written = []
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)  # SIGINT is ignored in background jobs

    def tool(argv):
        with cli.signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            written.append("the whole checkpoint")
        written.append("the next step")
        return 0
    assert cli.run("train.py", tool) == 143
    assert written == ["the whole checkpoint"]
    assert capsys.readouterr().err == "train.py: interrupted by SIGTERM; nothing was left half-written\n"
    # the tool's handlers are gone again: the process's own are back
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
