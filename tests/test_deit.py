"""DeiT family: registration, parity with the official outputs (tests/fixtures, see its README), sizes,
checkpoints, official conversion, bad input."""
import os

import numpy as np
import mindspore as ms
import mindcv
import pytest
from mindspore import Tensor

import slab_ms
from slab_ms.models.deit import VisionTransformer
from slab_ms.convert import main as convert_main
from slab_ms.weights import convert_state_dict, load_official_checkpoint, read_state_dict
from slab_ms.layers import PRepBNSchedule
from parity_utils import (FIXTURES, check_parity, load_fixture, norm_kwargs, official_layer_keys, official_norm_keys,
                          official_params, random_official_state, rel_err)

DEIT = ["deit_tiny_prepbn", "deit_small_prepbn", "slab_deit_tiny", "slab_deit_small"]
TINY = dict(num_classes=5, image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)


def test_registered_in_mindcv():
    assert set(DEIT) <= set(slab_ms.list_models())
    assert set(DEIT) <= set(mindcv.list_models("*deit*"))


@pytest.mark.parametrize("fixture", ["small_deit_prepbn_repbn.npz", "small_deit_prepbn_linearnorm.npz",
                                     "small_slab_deit.npz"])
def test_deit_parity(fixture):
    _, meta = load_fixture(fixture)
    kw = dict(meta["kwargs"])
    norm = norm_kwargs(kw.pop("norm_layer"))
    attn = "sla" if meta["ctor"] == "models.slab_deit:VisionTransformer" else "softmax"
    net = VisionTransformer(**kw, **norm, attn=attn)
    errors = check_parity(net, fixture)
    assert len([k for k in errors if k.startswith("act.")]) == 7


# All nn.Parameter elements of the reference (official_params). Ours has no dead cls_token in SLAB-DeiT.
@pytest.mark.parametrize("name,dead", [("deit_tiny_prepbn", 0), ("deit_small_prepbn", 0), ("slab_deit_tiny", 192),
                                       ("slab_deit_small", 384)])
def test_full_size_parameter_count(name, dead):
    net = mindcv.create_model(name)
    assert sum(p.size for p in net.trainable_params()) == official_params(name) - dead


def _official_deit_keys(depth, dim, slab, linearnorm, num_classes=1000, patches=196):
    """Official state-dict names and shapes, written out independently of the model code."""
    keys = {"cls_token": (1, 1, dim), "pos_embed": (1, patches + (0 if slab else 1), dim),
            **official_layer_keys("patch_embed.proj", dim, 3, 16, 16)}
    for i in range(depth):
        b = f"blocks.{i}"
        keys.update(official_norm_keys(b + ".norm1", dim, linearnorm))
        if slab:
            keys.update({f"{b}.attn.positional_encoding": (1, patches, dim),
                         **official_layer_keys(f"{b}.attn.dwc", 64, 1, 5, 5)})
        for name, shape in (("attn.qkv", (3 * dim, dim)), ("attn.proj", (dim, dim)), ("mlp.fc1", (4 * dim, dim)),
                            ("mlp.fc2", (dim, 4 * dim))):
            keys.update(official_layer_keys(f"{b}.{name}", *shape))
        keys.update(official_norm_keys(b + ".norm2", dim, linearnorm))
    keys.update(official_norm_keys("norm", dim, linearnorm))
    keys.update(official_layer_keys("head", num_classes, dim))
    return keys


@pytest.mark.parametrize("name,slab,linearnorm,n_keys", [
    ("deit_tiny_prepbn", False, False, 252), ("deit_small_prepbn", False, True, 377),
    ("slab_deit_tiny", True, True, 413)])
def test_full_size_official_state_dict_converts_strictly(name, slab, linearnorm, n_keys):
    dim = 384 if "small" in name else 192
    keys = _official_deit_keys(12, dim, slab, linearnorm)
    assert len(keys) == n_keys  # len(state_dict()) of the reference
    state = random_official_state(keys, np.random.default_rng(0), total_step=60000, it=1234)
    net = mindcv.create_model(name)
    params, schedule, notes = convert_state_dict(net, state)
    assert len(params) == len(list(net.get_parameters())) - (3 if linearnorm else 0)
    assert schedule == ((60000 - 1234, 60000, 0) if linearnorm else None)
    assert any("cls_token" in n for n in notes) == slab
    np.testing.assert_array_equal(params["blocks.3.mlp.fc1.weight"].asnumpy(), state["blocks.3.mlp.fc1.weight"])
    bn = "blocks.0.norm1.norm2.bn" if linearnorm else "blocks.0.norm1.bn"
    np.testing.assert_array_equal(params[f"{bn}.moving_variance"].asnumpy(), state[f"{bn}.running_var"])

    renamed = dict(state)
    renamed["blocks.0.attn.qkv.weights"] = renamed.pop("blocks.0.attn.qkv.weight")
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight[^s].*blocks\.0\.attn\.qkv\.weights"):
        convert_state_dict(net, renamed)
    missing = dict(state)
    del missing["norm.norm2.bn.running_mean" if linearnorm else "norm.bn.running_mean"]
    with pytest.raises(ValueError, match="missing in checkpoint \\(1\\): norm"):
        convert_state_dict(net, missing)


def test_official_pth_is_read_without_torch_and_matches_npz():
    pth = os.path.join(FIXTURES, "official_small_deit_prepbn.pth")
    npz = read_state_dict(os.path.join(FIXTURES, "small_deit_prepbn_linearnorm.npz"))
    state = read_state_dict(pth)
    assert state.keys() == npz.keys()
    for k in state:
        np.testing.assert_array_equal(state[k], npz[k], err_msg=k)
        assert state[k].dtype == npz[k].dtype, k


@pytest.fixture(scope="module")
def small_deit_s():
    data = np.load(os.path.join(FIXTURES, "small_deit_prepbn_linearnorm.npz"))
    net = slab_ms.create_model("deit_small_prepbn", num_classes=10, image_size=64, embed_dim=48, depth=2,
                               num_heads=3)
    return net, data


def test_convert_cli_round_trip_through_mindcv_create_model(small_deit_s, tmp_path):
    _, data = small_deit_s
    dst = tmp_path / "deit.ckpt"
    rc = convert_main(["--model", "deit_small_prepbn",
                       "--ckpt_file", os.path.join(FIXTURES, "official_small_deit_prepbn.pth"),
                       "--file_name", str(dst), "--num_classes", "10",
                       "--model_kwargs", '{"image_size": 64, "embed_dim": 48, "depth": 2, "num_heads": 3}'])
    assert rc == 0 and dst.is_file()
    net = mindcv.create_model("deit_small_prepbn", num_classes=10, image_size=64, embed_dim=48, depth=2,
                              num_heads=3, checkpoint_path=str(dst))
    net.set_train(False)
    assert rel_err(net(Tensor(data["__input__"])).asnumpy(), data["__logits_eval__"]) <= 1e-4
    # The reference counters (iter = 0 at the end of training) became the model's schedule: γ = 0.
    assert PRepBNSchedule.require(net).state() == {"step": 300000, "decay_steps": 300000, "warmup_steps": 0}


def test_checkpoint_of_another_model_or_size_is_refused(small_deit_s, tmp_path):
    net, _ = small_deit_s
    other = slab_ms.create_model("slab_deit_tiny", **TINY)
    path = str(tmp_path / "other.ckpt")
    ms.save_checkpoint(other, path)
    with pytest.raises(ValueError, match="(?s)does not fit VisionTransformer.*missing in checkpoint"):
        slab_ms.create_model("deit_small_prepbn", num_classes=10, image_size=64, embed_dim=48, depth=2,
                             num_heads=3, checkpoint_path=path)
    with pytest.raises(ValueError, match="shape mismatch"):
        mindcv.create_model("slab_deit_tiny", **dict(TINY, num_classes=7), checkpoint_path=path)
    with pytest.raises(ValueError, match="does not fit VisionTransformer"):
        load_official_checkpoint(other, os.path.join(FIXTURES, "small_slab_deit.npz"))


def test_missing_checkpoint_file_is_an_error():
    with pytest.raises(FileNotFoundError, match="Checkpoint file not found: 'nope.ckpt'"):
        mindcv.create_model("slab_deit_tiny", **TINY, checkpoint_path="nope.ckpt")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_official_checkpoint(slab_ms.create_model("slab_deit_tiny", **TINY), "nope.pth")


def test_pretrained_says_how_to_get_weights():
    with pytest.raises(ValueError, match="python -m slab_ms.convert --model slab_deit_tiny"):
        mindcv.create_model("slab_deit_tiny", pretrained=True)


@pytest.fixture(scope="module")
def tiny_slab():
    net = slab_ms.create_model("slab_deit_tiny", **TINY)
    net.set_train(False)
    return net


def test_bad_input_gives_one_clear_error(tiny_slab):
    with pytest.raises(ValueError, match="built for 3 input channels but the input has 1"):
        tiny_slab(Tensor(np.zeros((1, 1, 32, 32), np.float32)))
    with pytest.raises(ValueError, match="divisible by 8, got 30x32"):
        tiny_slab(Tensor(np.zeros((1, 3, 30, 32), np.float32)))


def test_other_input_sizes_resize_the_positional_encodings(tiny_slab):
    out = tiny_slab(Tensor(np.random.default_rng(0).normal(size=(2, 3, 48, 40)).astype(np.float32)))
    assert out.shape == (2, 5) and np.isfinite(out.asnumpy()).all()


def test_fine_tuning_on_another_number_of_classes_leaves_the_head_out(tmp_path):
    src = slab_ms.create_model("slab_deit_tiny", **TINY)
    path = str(tmp_path / "five_classes.ckpt")
    ms.save_checkpoint(src, path)
    with pytest.raises(ValueError, match="Only the classifier differs.*ckpt_exclude head"):
        slab_ms.create_model("slab_deit_tiny", **dict(TINY, num_classes=3), checkpoint_path=path)
    net = slab_ms.create_model("slab_deit_tiny", **dict(TINY, num_classes=3), checkpoint_path=path,
                               checkpoint_exclude=("head",))
    theirs = dict(src.parameters_and_names())
    for name, param in net.parameters_and_names():
        if name.startswith("head."):
            assert param.shape[0] == 3
        else:
            np.testing.assert_array_equal(param.asnumpy(), theirs[name].asnumpy(), err_msg=name)


def test_official_checkpoint_without_its_head_gives_the_official_features():
    data = np.load(os.path.join(FIXTURES, "small_slab_deit.npz"))
    net = slab_ms.create_model("slab_deit_tiny", num_classes=4, image_size=56, patch_size=4, embed_dim=48,
                               depth=2, num_heads=3)
    load_official_checkpoint(net, os.path.join(FIXTURES, "small_slab_deit.npz"), exclude=("head",))
    net.set_train(False)
    feats = net.forward_head(net.forward_features(Tensor(data["__input__"])), pre_logits=True).asnumpy()
    assert rel_err(feats, data["__features_eval__"]) <= 1e-4
    assert net(Tensor(data["__input__"])).shape == (2, 4)


def test_train_recipe_accepts_ckpt_exclude_under_both_spellings():
    from slab_ms.training.config import build_parser
    for flag in ("--ckpt_exclude", "--checkpoint_exclude"):
        assert build_parser().parse_args([flag, "head"]).ckpt_exclude == ["head"]


def test_checkpoint_written_before_the_weights_package_still_loads():
    """A .ckpt saved by slab-ms 0.1.0 (γ schedule at step 7 of T = 20) loads strictly, schedule included,
    and gives the logits it gave then."""
    net = slab_ms.create_model("slab_deit_tiny", **TINY, checkpoint_path=os.path.join(
        FIXTURES, "pre_refactor_slab_deit_tiny.ckpt"))
    assert PRepBNSchedule.require(net).state() == {"step": 7, "decay_steps": 20, "warmup_steps": 0}
    net.set_train(False)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    expected = np.load(os.path.join(FIXTURES, "pre_refactor_slab_deit_tiny_logits.npy"))
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-5, atol=1e-6)
