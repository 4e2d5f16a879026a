"""Detection / segmentation backbones (``features_only=True``): every registered model's feature maps and
``feature_info``, parity of the stage outputs with the official activations, any input size (Swin's and CSwin's
padding agrees with the unpadded computation), the deploy form, and the fine-tuning modes."""
import os

import numpy as np
import mindspore as ms
import mindcv
import pytest
from mindspore import Tensor, nn

import slab_ms
from slab_ms.layers import PRepBNSchedule, RepBN, TokenBatchNorm
from slab_ms.layers.fold import zero_preimage
from slab_ms.models import family_of, tiny_config
from slab_ms.models.cswin import CSWinTransformer
from slab_ms.models.deit import VisionTransformer
from slab_ms.models.pvt import PyramidVisionTransformer
from slab_ms.models.swin import SwinTransformer
from slab_ms.reparam import remaining_norms
from slab_ms.training import TrainStep
from slab_ms.weights import load_official_checkpoint
from parity_utils import FIXTURES, act_rel_err, load_fixture, norm_kwargs, official_kwargs, pvt_kwargs
from helpers import norm_cells, randomize

MODELS = slab_ms.list_models()


def _input(hw, batch=2, seed=1):
    return Tensor(np.random.default_rng(seed).standard_normal((batch, 3) + tuple(hw), dtype=np.float32))


def _all_outputs(name):
    """Every stage of a hierarchical family; the first and the last block of DeiT."""
    return (0, -1) if family_of(name).__name__.endswith("deit") else (0, 1, 2, 3)[:len(tiny_config(name).get(
        "depths", (0,) * 4))]


def _rel(a, b):
    return float(np.abs(a - b).max() / max(1e-12, float(np.abs(b).max())))


# ------------------------------------------------------------------------------------ every registered model
@pytest.mark.parametrize("name", MODELS)
def test_features_feature_info_and_deploy_form_of_every_model(name):
    """Odd input size, outputs as feature_info says, mindcv.create_model the same, and the deploy form: no norm
    cell left, the same features (BN statistics randomised, so padded maps and the output norms are tested)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    config = tiny_config(name)
    config.pop("image_size")
    out_indices = _all_outputs(name)
    ms.set_seed(0)
    net = randomize(slab_ms.create_model(name, features_only=True, out_indices=out_indices, image_size=tiny_config(
        name)["image_size"], **config), weight_gain=0.5)
    hw = (45, 71)
    feats = [f.asnumpy() for f in net(_input(hw))]
    assert len(feats) == len(net.feature_info) == len(out_indices)
    family = family_of(name).__name__.rsplit(".", 1)[-1]
    depth = config.get("depth", 0)
    for f, info, index in zip(feats, net.feature_info, out_indices):
        assert info["index"] == index % (depth if family == "deit" else 4) and info["name"]
        assert f.shape[:2] == (2, info["chs"]) and np.isfinite(f).all()
        # whole patches (DeiT, PVT), padding to the grid (Swin) or a padded stride-2 conv (CSwin)
        assert all(s // info["reduction"] <= n <= -(-s // info["reduction"]) for s, n in zip(hw, f.shape[2:]))
    assert net.out_channels == [i["chs"] for i in net.feature_info]
    assert [p.name for p in net.get_parameters()] == [n for n, _ in net.parameters_and_names()]
    assert not any(n.startswith("head.") for n, _ in net.parameters_and_names())

    deploy = slab_ms.reparameterize_model(net)
    assert norm_cells(deploy) == [] and remaining_norms(deploy) == []
    for f, g in zip(feats, deploy(_input(hw))):
        assert _rel(g.asnumpy(), f) <= 1e-4

    via_mindcv = mindcv.create_model(name, features_only=True, out_indices=out_indices, **tiny_config(name))
    assert via_mindcv.feature_info == net.feature_info


def test_backbone_arguments_are_checked():
    with pytest.raises(ValueError, match="not a stage index"):
        slab_ms.create_model("slab_pvt_tiny", features_only=True, out_indices=(0, 4), **tiny_config("slab_pvt_tiny"))
    with pytest.raises(ValueError, match="features_only=True"):
        slab_ms.create_model("slab_pvt_tiny", frozen_stages=1, **tiny_config("slab_pvt_tiny"))
    with pytest.raises(ValueError, match="frozen_stages must be"):
        slab_ms.create_model("slab_swin_tiny", features_only=True, frozen_stages=3, **tiny_config("slab_swin_tiny"))
    deit = slab_ms.create_model("slab_deit_tiny", features_only=True, **tiny_config("slab_deit_tiny"))
    assert [i["index"] for i in deit.feature_info] == [1]  # the last block by default
    official = slab_ms.create_model("slab_swin_tiny", features_only=True, out_norm="ln",
                                    **tiny_config("slab_swin_tiny"))
    assert [kind for _, kind, _ in remaining_norms(slab_ms.reparameterize_model(official))] == ["LayerNorm"] * 2
    plain = slab_ms.create_model("slab_pvt_tiny", features_only=True, out_norm="none", **tiny_config("slab_pvt_tiny"))
    assert all(isinstance(norm, nn.Identity) for norm in plain.out_norms)
    # a block whose window covers its whole map at image_size: unshifted in the classifier, shifted by half the
    # window in the backbone (the official detection backbones never drop the shift)
    swin = slab_ms.create_model("swin_tiny_prepbn", features_only=True, **dict(tiny_config("swin_tiny_prepbn"),
                                                                               depths=(2, 2)))
    last = swin.layers[1].blocks[1]
    assert (last.window_size, last.shift_size, last.feature_shift) == (4, 0, 2)


# ------------------------------------------------------------------------------ parity with the official code
def _official_model(fixture, meta):
    kw = dict(meta["kwargs"])
    if "pvt" in fixture:
        return PyramidVisionTransformer, pvt_kwargs(meta), "block{}.0", 4
    if "deit" in fixture:
        norm = norm_kwargs(kw.pop("norm_layer"))
        attn = "sla" if meta["ctor"] == "models.slab_deit:VisionTransformer" else "softmax"
        return VisionTransformer, dict(kw, **norm, attn=attn), "blocks.{}", kw["depth"]
    if "cswin" in fixture:
        return CSWinTransformer, dict(official_kwargs(kw), prepbn_decay_steps=120000), "stage{}.0", 4
    switches = (dict(norm="repbn", attn="softmax") if "prepbn" in fixture else
                dict(attn="sla", norm="prepbn", prepbn_decay_steps=60000, ln_eps=1e-5))
    return SwinTransformer, dict(official_kwargs(kw), **switches), "layers.{}.blocks", 4


@pytest.mark.parametrize("fixture", ["small_deit_prepbn_linearnorm.npz", "small_slab_pvt.npz",
                                     "small_swin_prepbn.npz", "small_slab_swin.npz", "small_slab_cswin.npz"])
def test_stage_outputs_equal_the_official_activations(fixture):
    """Official weights in the backbone form: every output is the official stage output (the last block of the
    stage in the fixture's activations) through the output norm's eval map."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    data, meta = load_fixture(fixture)
    cls, kwargs, key, count = _official_model(fixture, meta)
    backbone = randomize(cls(**kwargs, features_only=True, out_indices=tuple(range(count))))
    norms = {n: p.asnumpy().copy() for n, p in backbone.parameters_and_names() if n.startswith("out_norms.")}
    # the official classifier's checkpoint: its head and final norm are skipped, the output norms kept
    load_official_checkpoint(backbone, os.path.join(FIXTURES, fixture))
    assert all(np.array_equal(p.asnumpy(), norms[n]) for n, p in backbone.parameters_and_names() if n in norms)
    backbone.set_train(False)
    feats = backbone(Tensor(data["__input__"]))
    for i, (feat, info, norm) in enumerate(zip(feats, backbone.feature_info, backbone.out_norms)):
        if "swin" in fixture and "cswin" not in fixture:
            blocks = sorted(k for k in data if k.startswith(f"__act__.layers.{i}.blocks.") and k.count(".") == 4)
            official = data[blocks[-1]]
        else:
            official = data["__act__." + key.format(i + 1 if "deit" not in fixture else i)]
        official = official[0, getattr(backbone, "num_prefix_tokens", 0):]
        a, b = norm.affine()
        expected = (official * a + b).T.reshape(feat.shape[1:])
        assert act_rel_err(feat.asnumpy()[0], expected) <= 1e-4, (fixture, info)


def test_a_classifier_checkpoint_loads_into_its_backbone_and_a_backbone_into_itself(tmp_path):
    name = "slab_cswin_tiny"
    classifier = randomize(slab_ms.create_model(name, num_classes=10, **tiny_config(name)))
    ms.save_checkpoint(classifier, str(tmp_path / "cls.ckpt"))
    backbone = slab_ms.create_model(name, features_only=True, checkpoint_path=str(tmp_path / "cls.ckpt"),
                                    **tiny_config(name))
    weights = dict(classifier.parameters_and_names())
    for n, p in backbone.parameters_and_names():
        assert n.startswith("out_norms.") or np.array_equal(p.asnumpy(), weights[n].asnumpy()), n
    ms.save_checkpoint(randomize(backbone, seed=3), str(tmp_path / "backbone.ckpt"))
    again = slab_ms.create_model(name, features_only=True, checkpoint_path=str(tmp_path / "backbone.ckpt"),
                                 **tiny_config(name))
    assert all(np.array_equal(p.asnumpy(), q.asnumpy()) for p, q in zip(again.get_parameters(),
                                                                         backbone.get_parameters()))
    with pytest.raises(ValueError, match="out_norms.3"):  # a backbone with other outputs does not fit
        slab_ms.create_model(name, features_only=True, out_indices=(0, 1, 2),
                             checkpoint_path=str(tmp_path / "backbone.ckpt"), **tiny_config(name))


# ------------------------------------------------------------------------------ any input size: Swin, CSwin
def _blocks(net, kind):
    return [cell for _, cell in net.cells_and_names() if type(cell).__name__ == kind]


@pytest.mark.parametrize("name, hw", [("swin_tiny_prepbn", (21, 30)), ("slab_swin_tiny", (33, 19)),
                                      ("slab_cswin_tiny", (13, 10)), ("slab_cswin_tiny", (5, 11))])
def test_padded_block_equals_the_unpadded_block_on_the_grid_it_pads_to(name, hw):
    """A block on an ``hw`` map that its windows (Swin) or stripes (CSwin) do not tile pads the normalised map
    with zeros; that must equal the same block on the tiled grid, fed norm1's zero preimage in the padding."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = randomize(slab_ms.create_model(name, features_only=True, **tiny_config(name)), weight_gain=0.5)
    net.set_train(False)
    kinds = {"SwinTransformerBlock": lambda blk: blk.window_size, "CSWinBlock": lambda blk: blk.stripe_split}
    tested = 0
    for kind, multiple in kinds.items():
        for blk in _blocks(net, kind):
            m = multiple(blk)
            if not m:
                continue
            c = blk.mlp.fc1.in_channels
            hp, wp = -(-hw[0] // m) * m, -(-hw[1] // m) * m
            x = np.random.default_rng(tested).standard_normal((2, hw[0], hw[1], c)).astype(np.float32)
            padded = np.broadcast_to(zero_preimage(blk.norm1), (2, hp, wp, c)).copy()
            padded[:, :hw[0], :hw[1]] = x
            small = blk(Tensor(x.reshape(2, -1, c)), hw).asnumpy()
            big = blk(Tensor(padded.reshape(2, -1, c)), (hp, wp)).asnumpy()
            big = big.reshape(2, hp, wp, c)[:, :hw[0], :hw[1]].reshape(small.shape)
            assert _rel(small, big) < 1e-5, (kind, m)
            tested += 1
    assert tested >= 2


@pytest.mark.parametrize("name, size", [("swin_tiny_prepbn", (64, 96)), ("slab_swin_tiny", (84, 112))])
def test_swin_backbone_on_a_new_grid_equals_a_model_built_for_it(name, size):
    """On a grid the windows tile, the per-shape path (shift masks and window order computed for the input)
    gives what a model built for that size computes with its precomputed gather and masks."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    config = tiny_config(name)
    net = randomize(slab_ms.create_model(name, features_only=True, **config), weight_gain=0.5)
    built = slab_ms.create_model(name, features_only=True, **dict(config, image_size=size))
    ms.load_param_into_net(built, dict(net.parameters_and_names()), strict_load=True)
    for model in (net, built):
        model.set_train(False)
    x = _input(size)
    assert any(blk.input_resolution != tuple(s // config["patch_size"] for s in size)
               for blk in _blocks(net, "SwinTransformerBlock"))
    for a, b in zip(net(x), built(x)):
        assert _rel(a.asnumpy(), b.asnumpy()) < 1e-5


@pytest.mark.parametrize("name", ["swin_tiny_prepbn"])
def test_large_odd_input(name):
    """800×1216 (the padding of every stage) runs; strides as feature_info says."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = slab_ms.create_model(name, features_only=True, **tiny_config(name))
    net.set_train(False)
    feats = net(_input((800, 1216), batch=1))
    for f, info in zip(feats, net.feature_info):
        assert f.shape == (1, info["chs"], -(-800 // info["reduction"]), -(-1216 // info["reduction"]))
        assert np.isfinite(f.asnumpy()).all()


# ------------------------------------------------------------------------------------- fine-tuning modes
class _FeatureLoss(nn.Cell):
    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, images, labels):
        loss = 0.0
        for feat in self.net(images):
            loss = loss + (feat * feat).mean()
        return loss


def _train_step(net, hw):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    loss = _FeatureLoss(net)
    opt = nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9)
    step = TrainStep(loss, opt, net)
    step.set_train(True)
    step(_input(hw), Tensor(np.zeros(2, np.int32)))


def _values(net):
    return {n: p.asnumpy().copy() for n, p in net.parameters_and_names()}


@pytest.mark.parametrize("name", ["slab_swin_tiny", "pvt_tiny_prepbn"])
def test_frozen_stages_and_norm_eval_in_a_train_step(name):
    """frozen_stages=1 + norm_eval: the patch embedding and stage 1 do not move and stay in eval mode, no BN
    statistic moves, the rest trains (BN affines and η included) and γ advances."""
    net = slab_ms.create_model(name, features_only=True, frozen_stages=1, norm_eval=True, **tiny_config(name))
    schedule = PRepBNSchedule.of(net)
    schedule.set(step=schedule.state()["decay_steps"] // 2)
    frozen = ("patch_embed", "layers.0.") if "swin" in name else ("patch_embed1.", "pos_embed1", "block1.")
    before = _values(net)
    _train_step(net, (70, 90))  # PVT's stage 2 then has 2x2 reduced keys: q gets a gradient
    after = _values(net)
    moved = {n for n in before if not np.array_equal(before[n], after[n])}
    assert not {n for n in moved if n.startswith(frozen)}
    assert not {n for n in moved if "moving_" in n}
    trained = {n for n in before if not n.startswith(frozen) and "moving_" not in n and "prepbn_" not in n}
    assert {n for n in trained if n.endswith(("alpha", "bn.gamma"))} & moved
    assert trained <= moved, sorted(trained - moved)
    assert schedule.state()["step"] == schedule.state()["decay_steps"] // 2 + 1
    cells = dict(net.cells_and_names())
    assert not cells[frozen[0].rstrip(".")].training and net.training
    assert all(not cell.training for n, cell in cells.items() if n.startswith(frozen[-1]))


def test_freeze_eta_keeps_every_alpha_and_batch_statistics_still_move():
    name = "slab_cswin_tiny"
    net = slab_ms.create_model(name, features_only=True, freeze_eta=True, **tiny_config(name))
    before = _values(net)
    _train_step(net, (40, 24))
    after = _values(net)
    moved = {n for n in before if not np.array_equal(before[n], after[n])}
    alphas = [n for n, c in net.cells_and_names() if isinstance(c, RepBN)]
    assert alphas and not {n for n in moved if n.endswith(".alpha")}
    assert {n for n in moved if "moving_mean" in n} and {n for n in moved if n.endswith("qkv.weight")}
    assert all(c.bn.use_batch_statistics is None for _, c in net.cells_and_names() if isinstance(c, TokenBatchNorm))
