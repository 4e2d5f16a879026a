"""PVT v1 family: parity with the official PyTorch outputs, full-size sizes, converter coverage, input sizes."""
import re

import numpy as np
import pytest
import mindspore as ms
from mindspore import ops
from mindspore.nn.utils import no_init_parameters
import mindcv

import slab_ms  # noqa: F401  (registers the models)
from slab_ms.weights import convert_state_dict
from slab_ms.layers import prepbn_layers, resize_token_grid
from slab_ms.models.pvt import PyramidVisionTransformer
from parity_utils import (check_parity, load_fixture, official_layer_keys, official_norm_keys, official_params,
                          pvt_kwargs, random_official_state)

PVT_NAMES = ["pvt_tiny_prepbn", "pvt_small_prepbn", "pvt_medium_prepbn", "slab_pvt_tiny"]

# The reference (full size, 224, 1000 classes): len(state_dict()) and its LinearNorms (parameters: official_params).
REFERENCE_KEYS = {"pvt_tiny_prepbn": 392, "slab_pvt_tiny": 338}
REFERENCE_LINEARNORMS = {"pvt_tiny_prepbn": 26, "pvt_small_prepbn": 49, "pvt_medium_prepbn": 85, "slab_pvt_tiny": 20}


@pytest.mark.parametrize("fixture, attn_type", [("small_pvt_prepbn.npz", "SSSS"), ("small_slab_pvt.npz", "LLLL")])
def test_pvt_parity(fixture, attn_type):
    _, meta = load_fixture(fixture)
    kw = pvt_kwargs(meta)
    assert kw["attn_type"] == attn_type
    net = PyramidVisionTransformer(**kw)
    errors = check_parity(net, fixture)
    assert len([k for k in errors if k.startswith("act.")]) == 16
    assert len([k for k in errors if k.startswith("bn.")]) == 2 * meta["train"]["linearnorm_count"]


# ------------------------------------------------------------------------------------ full size
@pytest.fixture(scope="module")
def full_size():
    """The four registered models at full size (shapes only: parameters are not initialised)."""
    with no_init_parameters():
        return {name: mindcv.create_model(name) for name in PVT_NAMES}


@pytest.mark.parametrize("name", PVT_NAMES)
def test_full_size_param_count(full_size, name):
    net = full_size[name]
    # PyTorch counts nn.Parameters only; here the BN moving statistics and the γ schedule are the
    # non-trainable Parameters, so the trainable ones must match the reference exactly.
    assert sum(p.size for p in net.trainable_params()) == official_params(name)
    assert len(prepbn_layers(net)) == REFERENCE_LINEARNORMS[name]
    assert net.no_weight_decay() == set()


# Written out independently of the model code.
DIMS, TOKENS, HIDDEN, SR = (64, 128, 320, 512), (3136, 784, 196, 49), (512, 1024, 1280, 2048), (8, 4, 2)


def official_pvt_shapes(attn_type, depths=(2, 2, 2, 2)):
    """Official state-dict name -> shape of a full-size PVT v1; 'SSSS' or 'LLLL'."""
    shapes = {}
    for s in range(1, 5):
        c, n, p, cin = DIMS[s - 1], TOKENS[s - 1], 4 if s == 1 else 2, 3 if s == 1 else DIMS[s - 2]
        shapes[f"pos_embed{s}"] = (1, n, c)
        shapes.update(official_layer_keys(f"patch_embed{s}.proj", c, cin, p, p))
        shapes.update(official_norm_keys(f"patch_embed{s}.norm", c))
        for layer in range(depths[s - 1]):
            blk = f"block{s}.{layer}"
            shapes.update(official_norm_keys(f"{blk}.norm1", c))
            if attn_type == "LLLL":
                shapes[f"{blk}.attn.positional_encoding"] = (1, n, c)
                shapes.update(official_layer_keys(f"{blk}.attn.dwc", 64, 1, 5, 5))
            for name, shape in (("q", (c, c)), ("kv", (2 * c, c)), ("proj", (c, c))):
                shapes.update(official_layer_keys(f"{blk}.attn.{name}", *shape))
            if attn_type == "SSSS" and s <= 3:
                r = SR[s - 1]
                shapes.update(official_layer_keys(f"{blk}.attn.sr", c, c, r, r))
                shapes.update(official_norm_keys(f"{blk}.attn.norm", c))
            shapes.update(official_norm_keys(f"{blk}.norm2", c))
            h = HIDDEN[s - 1]
            shapes.update(official_layer_keys(f"{blk}.mlp.fc1", h, c))
            shapes.update(official_layer_keys(f"{blk}.mlp.fc2", c, h))
    shapes.update(official_layer_keys("head", 1000, 512))
    return shapes


_TO_OFFICIAL = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


@pytest.mark.parametrize("name, attn_type", [("pvt_tiny_prepbn", "SSSS"), ("slab_pvt_tiny", "LLLL")])
def test_converter_covers_full_size(full_size, name, attn_type):
    net = full_size[name]
    state = random_official_state(official_pvt_shapes(attn_type), np.random.default_rng(0), total_step=300000,
                                  it=1000)
    assert len(state) == REFERENCE_KEYS[name]
    params, schedule, _ = convert_state_dict(net, state)
    assert schedule == (300000 - 1000, 300000, 0)
    own = [n for n, _ in net.parameters_and_names() if not n.startswith("prepbn_")]
    assert sorted(params) == sorted(own)
    for ms_name, param in params.items():
        prefix, _, leaf = ms_name.rpartition(".")
        official = f"{prefix}.{_TO_OFFICIAL.get(leaf, leaf)}" if prefix else leaf
        np.testing.assert_array_equal(param.asnumpy(), state[official], err_msg=ms_name)

    renamed = dict(state)
    renamed["block2.1.attn.k.weight"] = renamed.pop("block2.1.attn.kv.weight")
    with pytest.raises(ValueError, match=re.escape("block2.1.attn.k.weight")) as err:
        convert_state_dict(net, renamed)
    assert "block2.1.attn.kv.weight" in str(err.value)
    missing = dict(state)
    del missing["block4.1.norm2.norm2.bn.running_var"]
    with pytest.raises(ValueError, match=re.escape("block4.1.norm2.norm2.bn.running_var")):
        convert_state_dict(net, missing)


# --------------------------------------------------------------------------------- training
TINY = dict(img_size=64, num_classes=10, embed_dims=(16, 32, 40, 64), num_heads=(1, 2, 5, 8), depths=(1, 1, 1, 1),
            prepbn_decay_steps=300000)


def test_other_input_sizes_resize_the_position_tables():
    """A 64-px SLA model at 96 px equals a 96-px model holding its bilinearly resized position tables."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    small, large = PyramidVisionTransformer(**TINY, attn="sla"), PyramidVisionTransformer(**dict(TINY, img_size=96),
                                                                                          attn="sla")
    small.set_train(False)
    large.set_train(False)
    grids = {64: (16, 8, 4, 2), 96: (24, 12, 6, 3)}
    resized = 0
    for (name, p), q in zip(small.parameters_and_names(), large.get_parameters()):
        if p.shape == q.shape:
            q.set_data(p.data)
            continue
        stage = int(re.search(r"(?:pos_embed|block)(\d)", name).group(1)) - 1
        src, dst = grids[64][stage], grids[96][stage]
        q.set_data(resize_token_grid(p.data, (src, src), (dst, dst)))
        resized += 1
    assert resized == 8  # pos_embed{1..4} and four SLA positional encodings
    x = ms.Tensor(np.random.default_rng(1).standard_normal((1, 3, 96, 96)).astype(np.float32))
    np.testing.assert_allclose(small(x).asnumpy(), large(x).asnumpy(), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 32"):
        small(ops.zeros((1, 3, 100, 100), ms.float32))
