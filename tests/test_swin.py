"""Swin family: parity with the official PyTorch outputs, reference sizes, converter coverage, window layouts."""
import re

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from slab_ms import create_model
from slab_ms.weights import convert_state_dict
from slab_ms.models.swin import (SwinTransformer, cyclic_shift, relative_position_index, shifted_window_mask,
                                 window_partition, window_reverse)
from parity_utils import (check_parity, load_fixture, official_kwargs, official_layer_keys, official_norm_keys,
                          official_params, random_official_state)

SLAB_NORM = dict(norm="prepbn", prepbn_decay_steps=60000, ln_eps=1e-5)  # slab_swin.py's module-level LinearNorm


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("fixture, switches", [
    ("small_swin_prepbn.npz", dict(norm="repbn", attn="softmax")),  # SwinTransformer: RepBN by default
    ("small_slab_swin.npz", dict(attn="sla", **SLAB_NORM)),
])
def test_swin_parity(fixture, switches):
    _, meta = load_fixture(fixture)
    net = SwinTransformer(**official_kwargs(meta["kwargs"]), **switches)
    errors = check_parity(net, fixture)
    acts = [k for k in errors if k.startswith("act.")]
    assert len(acts) == len(meta["activation_keys"])
    assert max(errors[k] for k in acts) < 1e-5, errors  # measured ≤ 5e-7
    bn_stats = [k for k in errors if k.startswith("bn.")]
    assert len(bn_stats) == 2 * (17 if "prepbn" in fixture else 15)


# ------------------------------------------------------------------------------------- full-size models
@pytest.fixture(scope="module")
def full_models():
    return {name: create_model(name) for name in ("swin_tiny_prepbn", "slab_swin_tiny", "slab_swin_small")}




@pytest.mark.parametrize("name", ["slab_swin_small", "slab_swin_tiny", "swin_tiny_prepbn"])
def test_full_size_parameter_count(full_models, name):
    # The reference count is of every nn.Parameter; the PyTorch buffers (BN statistics, counters, index, masks) are
    # not parameters here either, and the γ schedule Parameters are not trainable.
    net = full_models[name]
    assert sum(p.size for p in net.trainable_params()) == official_params(name)


def official_swin_t_keys(slab):
    """Key -> shape of the official full-size Swin-T PRepBN or SLAB-Swin-T state dict."""
    def group(prefix, c):
        return official_norm_keys(prefix, c, linearnorm=slab)

    keys = official_layer_keys("patch_embed.proj", 96, 3, 4, 4)
    keys.update(group("patch_embed.norm", 96))
    for s, (depth, heads) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24))):
        c, res = 96 * 2 ** s, 56 // 2 ** s
        for layer in range(depth):
            p = f"layers.{s}.blocks.{layer}"
            keys.update(group(p + ".norm1", c))
            keys.update(group(p + ".norm2", c))
            for name, shape in (("attn.qkv", (3 * c, c)), ("attn.proj", (c, c)), ("mlp.fc1", (4 * c, c)),
                                ("mlp.fc2", (c, 4 * c))):
                keys.update(official_layer_keys(f"{p}.{name}", *shape))
            if slab and s < 2:  # 'L' stage: global SLA
                keys.update({p + ".attn.positional_encoding": (1, res * res, c),
                             **official_layer_keys(p + ".attn.dwc", 32, 1, 5, 5)})
            else:
                keys.update({p + ".attn.relative_position_bias_table": (169, heads),
                             p + ".attn.relative_position_index": (49, 49)})
                if layer % 2 and s < 3:
                    keys[p + ".attn_mask"] = ((res // 7) ** 2, 49, 49)
        if s < 3:
            keys.update(group(f"layers.{s}.downsample.norm", 4 * c))
            keys[f"layers.{s}.downsample.reduction.weight"] = (2 * c, 4 * c)
    keys.update(group("norm", 768))
    keys.update(official_layer_keys("head", 1000, 768))
    return keys


@pytest.mark.parametrize("name, slab, num_keys", [("swin_tiny_prepbn", False, 306), ("slab_swin_tiny", True, 453)])
def test_converter_covers_official_state_dict(full_models, name, slab, num_keys):
    net = full_models[name]
    keys = official_swin_t_keys(slab)
    assert len(keys) == num_keys  # len(state_dict()) of the reference, buffers included
    state = random_official_state(keys, np.random.default_rng(0), total_step=60000)

    params, schedule, notes = convert_state_dict(net, state)
    own = {n for n, p in net.parameters_and_names() if not n.startswith("prepbn_")}
    assert set(params) == own
    assert schedule == ((60000, 60000, 0) if slab else None)
    assert any("relative_position_index" in n for n in notes) and any("attn_mask" in n for n in notes)
    bn = "layers.2.blocks.5.norm1" + (".norm2" if slab else "")
    np.testing.assert_array_equal(params[bn + ".bn.moving_variance"].asnumpy(), state[bn + ".bn.running_var"])
    np.testing.assert_array_equal(params["layers.1.downsample.reduction.weight"].asnumpy(),
                                  state["layers.1.downsample.reduction.weight"])

    renamed = dict(state)
    renamed["layers.3.blocks.1.attn.qkv.w"] = renamed.pop("layers.3.blocks.1.attn.qkv.weight")
    names = r"(?s)missing in checkpoint \(1\): layers\.3\.blocks\.1\.attn\.qkv\.weight\n.*" \
            r"unexpected in checkpoint \(1\): layers\.3\.blocks\.1\.attn\.qkv\.w$"
    with pytest.raises(ValueError, match=names):
        convert_state_dict(net, renamed)
    removed = "layers.0.blocks.1.norm2" + (".norm2" if slab else "") + ".bn.running_mean"
    with pytest.raises(ValueError, match=r"missing in checkpoint \(1\): " + re.escape(removed)):
        convert_state_dict(net, {k: v for k, v in state.items() if k != removed})


# ----------------------------------------------------------------------------- geometry and errors
def test_window_helpers_match_numpy():
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(cyclic_shift(Tensor(x), -2).asnumpy(), np.roll(x, (-2, -2), axis=(1, 2)))
    windows = window_partition(Tensor(x), 4).asnumpy()
    np.testing.assert_array_equal(windows[1], x[0, :4, 4:].reshape(16, 3))  # image 0, window (0, 1)
    np.testing.assert_array_equal(windows[6], x[1, 4:, :4].reshape(16, 3))  # image 1, window (1, 0)
    np.testing.assert_array_equal(window_reverse(Tensor(windows), 4, 8, 8).asnumpy(), x)
    index = relative_position_index(7)
    assert index.shape == (49, 49) and index.min() == 0 and index.max() == 168 and index[0, 0] == 84
    mask = shifted_window_mask((14, 14), 7, 3)
    assert mask.shape == (4, 49, 49)
    assert (mask[0] == 0).all() and (mask[3] != 0).mean() > 0.5  # only windows on the wrap-around are masked


def test_window_layouts_and_input_errors():
    def layout(**kw):
        net = SwinTransformer(img_size=112, patch_size=2, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1),
                              num_classes=0, prepbn_decay_steps=100, **kw)
        return [(b.kind, b.window_size, b.shift_size) for layer in net.layers for b in layer.blocks]

    assert layout(attn="sla") == ([("L", 56, 0)] * 2 + [("L", 28, 0)] * 2 + [("S", 7, 0), ("S", 7, 3)]
                                  + [("S", 7, 0)] * 2)
    assert layout(attn="softmax") == [("S", 7, 0), ("S", 7, 3)] * 3 + [("S", 7, 0)] * 2
    assert layout(attn="sla", attn_type="LSSS", window_size=28)[:4] == [("L", 28, 0), ("L", 28, 14), ("S", 7, 0),
                                                                        ("S", 7, 3)]
    with pytest.raises(ValueError, match="attn='sla'"):
        layout(attn="softmax", attn_type="LLSS")
    with pytest.raises(ValueError, match="64x64 feature map cannot be split into 56x56 windows"):
        create_model("slab_swin_tiny", image_size=256)
    net = SwinTransformer(img_size=32, patch_size=4, embed_dim=8, depths=(1, 1), num_heads=(1, 1), window_size=4,
                          attn="softmax", norm="repbn", num_classes=0)
    with pytest.raises(ValueError, match="3 input channels"):
        net.forward_features(Tensor(np.zeros((1, 1, 32, 32), np.float32)))


@pytest.mark.parametrize("size", [64, 30])
def test_a_classifier_runs_other_input_sizes_in_graph_mode_as_its_backbone_form(size):
    """MindCV's train.py cannot pass image_size: a Swin built for 32² must classify a 64² (or 30², padded) batch in
    GRAPH_MODE, through the padded windows of the backbone form with the same weights."""
    ms.set_seed(0)
    net = SwinTransformer(img_size=32, patch_size=4, embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=4,
                          attn="sla", attn_type="LS", norm="repbn", num_classes=5)
    net.set_train(False)
    backbone = SwinTransformer(img_size=32, patch_size=4, embed_dim=8, depths=(1, 1), num_heads=(1, 2),
                               window_size=4, attn="sla", attn_type="LS", norm="repbn", features_only=True,
                               out_indices=(1,), out_norm="none")
    ms.load_param_into_net(backbone, {p.name: p for p in net.get_parameters()
                                      if not p.name.startswith(("head", "norm."))})
    backbone.set_train(False)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32))
    logits = net(x).asnumpy()
    features = backbone(x)[0].asnumpy().mean(axis=(2, 3))  # stage-2 map, pooled
    expected = net.head(net.norm(Tensor(features[:, None, :]))).asnumpy()[:, 0]
    assert logits.shape == (2, 5) and np.isfinite(logits).all()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ training
TINY = {
    # 8x8 tokens in 4x4 windows (shifted and masked in block 1), then 4x4 tokens in one window
    "swin_prepbn": dict(img_size=32, patch_size=4, embed_dim=8, depths=(2, 1), num_heads=(1, 2), window_size=4,
                        norm="repbn", attn="softmax"),
    # 28x28 tokens in 14x14 SLA windows (shifted in block 1), then 14x14 tokens in shifted 7x7 softmax windows
    "slab_swin": dict(img_size=56, patch_size=2, embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=14,
                      attn="sla", attn_type="LS", **SLAB_NORM),
}
