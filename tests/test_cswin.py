"""SLAB-CSwin: parity with the official PyTorch outputs, full-size size and converter coverage
(the reference's layout, names and sizes) and input sizes."""
import numpy as np
import mindspore as ms
import pytest

from slab_ms.weights import convert_state_dict
from slab_ms.layers import PRepBN, PRepBNSchedule
from slab_ms.models.cswin import CSWinTransformer, LePEAttention, SLALePEAttention, slab_cswin_tiny
from parity_utils import (check_parity, load_fixture, official_kwargs, official_layer_keys, official_norm_keys,
                          official_params, random_official_state)

FIXTURE = "small_slab_cswin.npz"
# slab_cswin_t (full size, 224, 1000 classes), counted on the official PyTorch model.
OFFICIAL_INFERENCE_PARAMS, OFFICIAL_KEYS = 21_201_183, 925
# The tiny model of the fixture, but with 4-wide SLA stripes in stage 2 so that every branch kind
# (SLA over the whole map, SLA stripes, softmax stripes, softmax over the whole map) is present.
TINY = dict(img_size=64, embed_dim=8, depth=[1, 1, 1, 1], split_size=[1, 2, 2, 2], la_split_size="16-4-4-2",
            num_heads=[1, 2, 4, 8], num_classes=10, attn_type="LLSS", prepbn_decay_steps=120000)


def test_parity_with_official_outputs():
    _, meta = load_fixture(FIXTURE)
    # Official kwarg names (incl. focusing_factor); T of the reference's module-level LinearNorm.
    net = CSWinTransformer(**official_kwargs(meta["kwargs"]), prepbn_decay_steps=120000)
    errors = check_parity(net, FIXTURE)
    acts = [k for k in errors if k.startswith("act.")]
    assert len(acts) == 17 and "act.stage3.0.attns.0" in acts and "act.stage3.0.attns.1" in acts
    assert len([k for k in errors if k.startswith("bn.")]) == 2 * 13


@pytest.fixture(scope="module")
def full_model():
    return slab_cswin_tiny()


def test_full_size_parameter_count(full_model):
    """The reference's count (official_params) includes its dead SLA ``scale`` (1, 1, C_s) in the 2 stage-1 and
    4 stage-2 blocks: 2·64 + 4·128 = 640 values we do not create. Its inference count (no LayerNorm
    inside PRepBN, no ``scale``) must match exactly."""
    trainable = sum(p.size for p in full_model.trainable_params())
    assert trainable == official_params("slab_cswin_tiny") - (2 * 64 + 4 * 128)
    prepbn = [c for _, c in full_model.cells_and_names() if isinstance(c, PRepBN)]
    assert len(prepbn) == 55
    layer_norm = sum(c.norm1.gamma.size + c.norm1.beta.size for c in prepbn)
    assert trainable - layer_norm == OFFICIAL_INFERENCE_PARAMS
    assert full_model.stripe_splits == (0, 0, 7, 0)  # stages 1, 2, 4 one branch; stage 3 stripes of 7


def official_cswin_keys():
    """Official state-dict name -> shape of slab_cswin_t, written out independently of the model code."""
    dims, depths, tokens = [64, 128, 256, 512], [2, 4, 18, 1], {1: 3136, 2: 784}
    keys = official_layer_keys("stage1_conv_embed.0", 64, 3, 7, 7)
    keys.update(official_norm_keys("stage1_conv_embed.2", 64))
    for s in range(1, 5):
        c = dims[s - 1]
        for layer in range(depths[s - 1]):
            p = f"stage{s}.{layer}"
            keys.update(official_layer_keys(p + ".qkv", 3 * c, c))
            keys.update(official_norm_keys(p + ".norm1", c))
            keys.update(official_layer_keys(p + ".proj", c, c))
            if s in (1, 2):
                keys[p + ".attns.0.scale"] = (1, 1, c)
                keys[p + ".attns.0.positional_encoding"] = (1, tokens[s], c)
                keys.update(official_layer_keys(p + ".attns.0.dwc", 32, 1, 5, 5))
            if s == 3:
                keys.update(official_layer_keys(p + ".attns.0.get_v", 128, 1, 3, 3))
                keys.update(official_layer_keys(p + ".attns.1.get_v", 128, 1, 3, 3))
            else:
                keys.update(official_layer_keys(p + ".attns.0.get_v", c, 1, 3, 3))
            keys.update(official_layer_keys(p + ".mlp.fc1", 4 * c, c))
            keys.update(official_layer_keys(p + ".mlp.fc2", c, 4 * c))
            keys.update(official_norm_keys(p + ".norm2", c))
        if s < 4:
            keys.update(official_layer_keys(f"merge{s}.conv", 2 * c, c, 3, 3))
            keys.update(official_norm_keys(f"merge{s}.norm", 2 * c))
    keys.update(official_norm_keys("norm", 512))
    keys.update(official_layer_keys("head", 1000, 512))
    return keys


def test_converter_covers_official_checkpoint(full_model):
    state = random_official_state(official_cswin_keys(), np.random.default_rng(0), total_step=120000)
    assert len(state) == OFFICIAL_KEYS
    params, schedule, notes = convert_state_dict(full_model, state)
    assert schedule == (120000, 120000, 0)
    ours = {n for n, _ in full_model.parameters_and_names()} - {"prepbn_step", "prepbn_decay_steps",
                                                                "prepbn_warmup_steps"}
    assert set(params) == ours
    # 925 = every converted parameter + 55·3 PRepBN counters + 55 num_batches_tracked + 6 dead scales.
    assert len(params) + 55 * 3 + 55 + 6 == OFFICIAL_KEYS
    assert any(n.startswith("dropped 6 key(s), dead parameter of SLAB-CSwin") for n in notes), notes
    for official, mine in [("stage3.17.attns.1.get_v.weight", "stage3.17.attns.1.get_v.weight"),
                           ("stage2.3.attns.0.positional_encoding", "stage2.3.attns.0.positional_encoding"),
                           ("merge3.norm.norm2.bn.running_var", "merge3.norm.norm2.bn.moving_variance"),
                           ("stage1_conv_embed.2.norm1.weight", "stage1_conv_embed.2.norm1.gamma")]:
        np.testing.assert_array_equal(params[mine].asnumpy(), state[official])

    renamed = dict(state)
    renamed["stage3.5.attns.1.get_v.kernel"] = renamed.pop("stage3.5.attns.1.get_v.weight")
    with pytest.raises(ValueError, match=r"stage3\.5\.attns\.1\.get_v\.weight[\s\S]*"
                                         r"stage3\.5\.attns\.1\.get_v\.kernel"):
        convert_state_dict(full_model, renamed)
    missing = dict(state)
    del missing["merge2.norm.norm2.alpha"]
    with pytest.raises(ValueError, match=r"missing in checkpoint \(1\): merge2\.norm\.norm2\.alpha$"):
        convert_state_dict(full_model, missing)


@pytest.fixture(scope="module")
def tiny_model():
    net = CSWinTransformer(**TINY)
    PRepBNSchedule.require(net).set(step=60000)  # γ = 0.5: both the LayerNorm and the RepBN branch train
    return net


def test_tiny_layout(tiny_model):
    kinds = [[type(a).__name__ for a in getattr(tiny_model, f"stage{s}")[0].attns] for s in range(1, 5)]
    assert kinds == [["SLALePEAttention"], ["SLALePEAttention"] * 2, ["LePEAttention"] * 2, ["LePEAttention"]]
    stripe_pe = tiny_model.stage2[0].attns[1].positional_encoding
    assert stripe_pe.shape == (1, 4 * 8, 8)  # horizontal stripes: 4 rows of the 8x8 map, C/2 channels
    assert not [n for n, _ in tiny_model.parameters_and_names() if n.endswith(".scale")]


def test_other_input_sizes(tiny_model):
    """Windows follow the map and P is resized at 96x96; 80x80 gives a 10x10 stage-2 map that 4-wide
    stripes do not tile: one clear error naming sizes that work."""
    tiny_model.set_train(False)
    ms.set_context(mode=ms.PYNATIVE_MODE)  # saves a graph compile; the error below is checked in graph mode
    logits = tiny_model(ms.Tensor(np.ones((1, 3, 96, 96), np.float32))).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    assert logits.shape == (1, 10) and np.isfinite(logits).all()
    assert tiny_model.supported_sizes.startswith("32, 64, 96, 128")
    with pytest.raises(ValueError, match=r"80x80 input gives stage 2 a 10x10 map, which stripes of width 4 "
                                         r"do not tile; input sizes that work: 32, 64, 96"):
        tiny_model(ms.Tensor(np.ones((1, 3, 80, 80), np.float32)))
    with pytest.raises(ValueError, match=r"img_size \(80, 80\) gives stage 1 a 20x20 map.*width \(16\)"):
        CSWinTransformer(**dict(TINY, img_size=80))


def test_switches_and_official_kwargs():
    """attn='softmax' is the CSWin baseline (LePE softmax stripes everywhere); contradictions fail."""
    net = CSWinTransformer(**dict(TINY, attn_type=None, num_heads=[2, 2, 4, 8]), attn="softmax", norm="ln")
    branches = [a for s in range(1, 5) for a in getattr(net, f"stage{s}")[0].attns]
    assert all(isinstance(a, LePEAttention) and not isinstance(a, SLALePEAttention) for a in branches)
    assert len(net.stage1[0].attns) == 2 and not [c for _, c in net.cells_and_names() if isinstance(c, PRepBN)]
    with pytest.raises(ValueError, match="contradicts attn_type 'LLSS'"):
        CSWinTransformer(**TINY, attn="softmax")
    default_windows = CSWinTransformer(**dict(TINY, img_size=96, la_split_size=None))  # 'L' = whole map
    assert default_windows.stripe_splits == (0, 0, 2, 0)
    assert default_windows.stage1[0].attns[0].positional_encoding.shape == (1, 24 * 24, 8)
    with pytest.raises(ValueError, match="needs an even number of heads, got 1"):
        CSWinTransformer(**dict(TINY, attn_type=None), attn="softmax")
    with pytest.raises(ValueError, match="patch_size must be 4"):
        CSWinTransformer(**TINY, patch_size=16)
    with pytest.raises(ValueError, match="disagree"):
        slab_cswin_tiny(in_channels=2, in_chans=1)
    small = {k: v for k, v in TINY.items() if k not in ("img_size", "num_classes")}
    assert slab_cswin_tiny(in_chans=1, img_size=64, **small).in_channels == 1  # the official names
