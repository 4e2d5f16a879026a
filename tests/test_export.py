"""export.py: deploy-form MindIR / ONNX that reload and reproduce the training-form logits; clear bad-input errors."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import mindspore as ms
import pytest
import yaml
from mindspore import Tensor, nn

import slab_ms.export as export
import slab_ms
from slab_ms.weights import load_checkpoint
from slab_ms.layers import PRepBNSchedule
from slab_ms.models import tiny_config
from helpers import randomize, relative_error, tiny_input


def _tiny_args(name):
    kwargs = tiny_config(name)
    return ["--image_size", str(kwargs.pop("image_size")), "--model_kwargs", json.dumps(kwargs)]


def _training_form(name, ckpt):
    net = slab_ms.create_model(name, num_classes=10, **tiny_config(name))
    return load_checkpoint(net, ckpt).set_train(False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A randomised tiny checkpoint per model, named like train.py's final checkpoints."""
    folder = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for seed, name in enumerate(["slab_deit_tiny", "pvt_tiny_prepbn", "slab_pvt_tiny"]):
        net = finished(randomize(slab_ms.create_model(name, num_classes=10, **tiny_config(name)), seed=seed))
        paths[name] = str(folder / f"{name}.ckpt")
        ms.save_checkpoint(net, paths[name])
    return paths


def finished(net):
    """``net`` with its γ schedule at the end (γ = 0), as a trained checkpoint is."""
    schedule = PRepBNSchedule.of(net)
    if schedule:
        schedule.set(step=schedule.end_step())
    return net


def _files(folder):
    return sorted(os.listdir(folder))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


DEMO_RECIPE = os.path.join(ROOT, "configs", "demo", "slab_deit_demo.yaml")


def test_no_arguments_exports_the_demo_checkpoint_as_mindir(tmp_path, monkeypatch, capsys):
    """``python export.py`` after the demo run, outside the repository: checkpoint, model, sizes and classes all come
    from the demo's run folder (its checkpoint and the options the run recorded beside it)."""
    from slab_ms.training import parse_options
    from slab_ms.training.outputs import run_output_path, save_config
    with open(DEMO_RECIPE, encoding="utf-8") as f:
        recipe = yaml.safe_load(f)
    monkeypatch.chdir(tmp_path)
    net = slab_ms.create_model(recipe["model"], num_classes=10, image_size=recipe["image_size"],
                               **recipe["model_kwargs"])
    finished(randomize(net))
    run = os.path.join(recipe["ckpt_dir"], "20261205-010203")
    os.makedirs(run)
    ckpt = os.path.join(run, f"{recipe['model']}.ckpt")
    ms.save_checkpoint(net, ckpt)
    save_config(run_output_path(run, recipe["model"], "config.yaml"), parse_options(["-c", DEMO_RECIPE]))
    assert export.main([]) == 0
    out = capsys.readouterr().out
    assert ckpt in out and "every norm folded" in out
    mindir = f"{recipe['model']}.mindir"
    assert _files(tmp_path) == sorted([os.path.normpath(recipe["ckpt_dir"]).split(os.sep)[0], mindir])
    # Reload independently, on another input than the one export.py checked.
    x = Tensor(np.random.default_rng(7).standard_normal((1, 3, recipe["image_size"], recipe["image_size"]),
                                                        dtype=np.float32))
    expected = net(x).asnumpy()
    actual = nn.GraphCell(ms.load(mindir))(x).asnumpy()
    assert np.abs(expected).max() > 1.0 and relative_error(actual, expected) <= 1e-4


def test_official_pth_to_mindir_reproduces_the_pytorch_logits(tmp_path):
    """Official PyTorch checkpoint -> converter -> fold -> MindIR, against the reference's own outputs."""
    fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
    reference = np.load(os.path.join(fixtures, "small_deit_prepbn_linearnorm.npz"))  # same weights as the .pth
    x, expected = reference["__input__"], reference["__logits_eval__"]
    path = str(tmp_path / "deit")
    argv = ["--model", "deit_small_prepbn", "--ckpt_file", os.path.join(fixtures, "official_small_deit_prepbn.pth"),
            "--file_name", path, "--num_classes", "10", "--image_size", str(x.shape[-1]), "--batch_size",
            str(x.shape[0]), "--model_kwargs", json.dumps({"embed_dim": 48, "depth": 2, "num_heads": 3})]
    assert export.main(argv) == 0
    actual = nn.GraphCell(ms.load(path + ".mindir"))(Tensor(x)).asnumpy()
    assert relative_error(actual, expected) <= 1e-4


@pytest.mark.parametrize("name", ["slab_deit_tiny", "pvt_tiny_prepbn", "slab_pvt_tiny"])
def test_onnx_round_trip(checkpoints, tmp_path, capsys, name):
    import onnxruntime
    path = str(tmp_path / name)
    argv = ["--model", name, "--ckpt_file", checkpoints[name], "--file_name", path, "--file_format", "ONNX"]
    assert export.main(argv + _tiny_args(name)) == 0
    assert "exact GELU(s) written without Erf" in capsys.readouterr().out
    assert _files(tmp_path) == [f"{name}.onnx"]
    x = tiny_input(name, batch=1, seed=8)
    expected = _training_form(name, checkpoints[name])(x).asnumpy()
    session = onnxruntime.InferenceSession(path + ".onnx", providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: x.asnumpy()})[0]
    assert np.abs(expected).max() > 1.0 and relative_error(actual, expected) <= 1e-4


@pytest.mark.parametrize("name", ["deit_tiny_prepbn", "slab_deit_tiny"])
def test_float16_mindir_computes_in_float16_within_its_tolerance(name, tmp_path, capsys):
    """--export_dtype float16: the folded model at O2 (float16 inside, float32 in and out), reloaded and compared
    with the float32 training form within 1e-2 · max(1, max|logit|); SLA keeps its normaliser in float32."""
    net = finished(randomize(slab_ms.create_model(name, num_classes=10, **tiny_config(name)), weight_gain=0.5))
    ckpt, path = str(tmp_path / "net.ckpt"), str(tmp_path / "net16")
    ms.save_checkpoint(net, ckpt)
    argv = ["--model", name, "--ckpt_file", ckpt, "--file_name", path, "--export_dtype", "float16"]
    assert export.main(argv + _tiny_args(name)) == 0
    out = capsys.readouterr().out
    assert "float16 deploy form vs training form" in out
    found = re.search(r"reloaded MINDIR vs training form: max\|diff\| (\S+) \(max\|logit\| (\S+),", out)
    error, largest = float(found.group(1)), float(found.group(2))
    # float16 arithmetic: visibly not the float32 numbers (those agree to ~1e-6), within the stated tolerance
    assert largest > 1.0 and 1e-4 * largest < error <= export.FLOAT16_RELATIVE_TOLERANCE * largest
    assert nn.GraphCell(ms.load(path + ".mindir"))(tiny_input(name, batch=1)).dtype == ms.float32


@pytest.mark.parametrize("case, message", [
    ("missing file", "checkpoint file not found"),
    ("another model", "is it for another model"),
    ("unknown model", "unknown --model 'deit_huge'"),
    ("AIR on CPU", "AIR can only be exported on Ascend"),
    ("unknown format", "unsupported --file_format 'PNG'"),
    ("no checkpoint", "no --ckpt_file given and no checkpoint"),
    ("recipe without checkpoint", "no checkpoint in the ckpt_dir"),
    ("missing output folder", "the folder of --file_name does not exist"),
    ("float16 ONNX", "--export_dtype float16 writes MINDIR or AIR"),
])
def test_bad_input_is_one_clear_error_and_no_file(checkpoints, tmp_path, monkeypatch, capsys, case, message):
    monkeypatch.chdir(tmp_path)
    ckpt = checkpoints["slab_deit_tiny"]
    argv = {
        "missing file": ["--model", "slab_deit_tiny", "--ckpt_file", "nowhere.ckpt"],
        "another model": ["--model", "deit_tiny_prepbn", "--ckpt_file", ckpt] + _tiny_args("slab_deit_tiny"),
        "unknown model": ["--model", "deit_huge", "--ckpt_file", ckpt],
        "AIR on CPU": ["--ckpt_file", ckpt, "--file_format", "AIR"],
        "unknown format": ["--ckpt_file", ckpt, "--file_format", "png"],
        "no checkpoint": ["--model", "slab_deit_tiny"],
        "recipe without checkpoint": ["-c", DEMO_RECIPE],
        "missing output folder": ["--ckpt_file", ckpt, "--file_name", "nowhere/net"],
        "float16 ONNX": ["--ckpt_file", ckpt, "--file_format", "ONNX", "--export_dtype", "float16"],
    }[case]
    assert export.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("export.py: error:") == 1
    assert _files(tmp_path) == []


def test_unavailable_device_is_one_clear_error(checkpoints, tmp_path):
    """In a fresh process (MindSpore fixes the device when its runtime starts)."""
    if "GPU" in ms.get_context("device_target") or ms.hal.is_available("GPU"):
        pytest.skip("this MindSpore can use a GPU")
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "export.py")
    result = subprocess.run([sys.executable, script, "--model", "slab_deit_tiny", "--ckpt_file",
                             checkpoints["slab_deit_tiny"], "--device_target", "GPU"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    assert result.stderr.count("export.py: error:") == 1 and "--device_target GPU is not usable" in result.stderr
    assert _files(tmp_path) == []


@pytest.mark.parametrize("stage", ["deploy form", "reloaded file"])
def test_mismatch_exits_1_with_the_numbers_and_leaves_no_file(checkpoints, tmp_path, monkeypatch, capsys, stage):
    if stage == "deploy form":
        fold = slab_ms.reparameterize_model

        def broken_fold(net):  # a fold that forgets the head bias
            deploy = fold(net)
            deploy.head.bias.set_data(Tensor(np.zeros(10, np.float32)))
            return deploy
        monkeypatch.setattr(export, "reparameterize_model", broken_fold)
    else:
        reload_logits = export.reload_logits
        monkeypatch.setattr(export, "reload_logits", lambda *args: [out + 0.5 for out in reload_logits(*args)])
    argv = ["--model", "slab_deit_tiny", "--ckpt_file", checkpoints["slab_deit_tiny"], "--file_name",
            str(tmp_path / "net")]
    assert export.main(argv + _tiny_args("slab_deit_tiny")) == 1
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out and "FAILED, nothing written" in captured.err and "> tolerance" in captured.err
    assert _files(tmp_path) == []


def test_unfinished_gamma_schedule_is_refused_unless_allowed(tmp_path, capsys):
    """A checkpoint saved mid-decay (γ > 0) trained a LayerNorm/RepBN mixture; its deploy form is pure RepBN."""
    net = randomize(slab_ms.create_model("slab_deit_tiny", num_classes=10, **tiny_config("slab_deit_tiny")))
    ckpt = str(tmp_path / "mid.ckpt")
    ms.save_checkpoint(net, ckpt)
    argv = ["--model", "slab_deit_tiny", "--ckpt_file", ckpt, "--file_name", str(tmp_path / "net")]
    argv += _tiny_args("slab_deit_tiny")
    assert export.main(argv) == 2
    err = capsys.readouterr().err
    assert "γ schedule is unfinished: step 1" in err and "--allow_unfinished" in err
    assert export.main(argv + ["--allow_unfinished"]) == 0 and os.path.isfile(tmp_path / "net.mindir")


def test_backbone_exports_at_a_given_odd_input_size(tmp_path, capsys):
    """--features_only --out_indices --input_size: the folded Swin backbone (per-shape window masks and padding
    in the graph) is written as MindIR, reloads, and reproduces every feature map of the training form."""
    name = "slab_swin_tiny"
    backbone = dict(features_only=True, out_indices=(0, 1))
    net = finished(randomize(slab_ms.create_model(name, **backbone, **tiny_config(name)), weight_gain=0.5))
    ckpt = str(tmp_path / f"{name}.ckpt")
    ms.save_checkpoint(net, ckpt)
    out = tmp_path / "backbone"
    argv = ["--model", name, "--ckpt_file", ckpt, "--features_only", "--out_indices", "0,1", "--input_size", "45,71",
            "--file_name", str(out), "--mode", "1"] + _tiny_args(name)
    assert export.main(argv) == 0
    assert "every norm folded" in capsys.readouterr().out
    x = np.random.default_rng(3).standard_normal((1, 3, 45, 71)).astype(np.float32)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net.set_train(False)
    reloaded = nn.GraphCell(ms.load(str(out) + ".mindir"))(Tensor(x))
    for got, want, info in zip(reloaded, net(Tensor(x)), net.feature_info):
        assert got.shape == (1, info["chs"], -(-45 // info["reduction"]), -(-71 // info["reduction"]))
        assert relative_error(got.asnumpy(), want.asnumpy()) <= 1e-4
    assert export.main(argv[:-len(_tiny_args(name))] + ["--overwrite", "--out_indices", "0,5"]
                       + _tiny_args(name)) == 2
    assert "out_indices" in capsys.readouterr().err
