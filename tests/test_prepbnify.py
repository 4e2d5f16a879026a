"""prepbnify: MindCV's own ViT, Swin, PVT and PVTv2 trained with PRepBN, driven by GammaDecay, folded for deploy."""
import copy

import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn
from mindcv.models import pvt, pvtv2, swintransformer, vit

import slab_ms
from slab_ms.layers import ChannelAffine, PRepBN, PRepBNSchedule
from slab_ms.prepbnify import prepbnify
from slab_ms.reparam import remaining_norms
from slab_ms.training import GammaDecay
from helpers import norm_cells, randomize, relative_error

PVT_SIZES = dict(img_size=64, embed_dims=[16, 32, 40, 64], num_heads=[1, 2, 5, 8], mlp_ratios=[2, 2, 2, 2],
                 depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], num_classes=10)
# The smallest configuration of each MindCV family that keeps every cell type, and its input size.
FAMILIES = {
    "vit": (lambda: vit.VisionTransformer(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                          num_classes=10), 32, 5),
    "swin": (lambda: swintransformer.SwinTransformer(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2],
                                                     num_heads=[1, 2], window_size=4, num_classes=10), 32, 11),
    "pvt": (lambda: pvt.PyramidVisionTransformer(**PVT_SIZES), 64, 16),
    "pvtv2": (lambda: pvtv2.PyramidVisionTransformerV2(**PVT_SIZES), 64, 19),
}


def _input(size, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal((2, 3, size, size)).astype(np.float32))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prepbnify_starts_as_the_layernorm_model_and_trains_every_parameter(family):
    build, size, norms = FAMILIES[family]
    ms.set_seed(0)
    original = build()
    net = copy.deepcopy(original)
    replaced = prepbnify(net, decay_steps=4)
    cells = dict(net.cells_and_names())
    layer_norms = [n for n, c in cells.items() if isinstance(c, nn.LayerNorm)]  # MindCV's or the native-kernel one
    assert len(replaced) == norms == len(layer_norms)  # each is now the LayerNorm side of a PRepBN
    assert all(isinstance(cells[n.rpartition(".")[0]], PRepBN) for n in layer_norms)
    x = _input(size)
    # γ = 1 at step 0: in training the model is the LayerNorm model it was (no dropout in these configs).
    original.set_train(True)
    net.set_train(True)
    np.testing.assert_allclose(net(x).asnumpy(), original(x).asnumpy(), rtol=1e-4, atol=1e-5)
    PRepBNSchedule.of(net).set(step=2)  # γ = 0.5: both branches live
    params = net.trainable_params()
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def forward(images, labels):
        return loss_fn(net(images), labels)

    loss, grads = ms.jit(ms.value_and_grad(forward, None, params))(x, Tensor(np.array([1, 7], np.int32)))
    assert np.isfinite(loss.asnumpy())
    dead = [p.name for p, g in zip(params, grads) if not np.abs(g.asnumpy()).max() > 0]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gamma_decay_drives_it_to_repbn_and_the_deploy_form_has_no_norm(family):
    build, size, _ = FAMILIES[family]
    net = build()
    prepbnify(net, decay_steps=3)
    gamma_decay = GammaDecay(net, total_steps=3, print_fn=lambda *_: None)
    gamma_decay.on_train_begin()
    assert [gamma_decay.on_train_step_end() for _ in range(3)] == pytest.approx([2 / 3, 1 / 3, 0.0])
    gamma_decay.on_train_end()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    randomize(net, weight_gain=0.5)
    PRepBNSchedule.of(net).set(step=3)
    x = _input(size, seed=1)
    expected = net(x).asnumpy()
    deploy = slab_ms.reparameterize_model(net)
    assert relative_error(deploy(x).asnumpy(), expected) <= 1e-4
    assert norm_cells(deploy) == [] and remaining_norms(deploy) == []
    affines = [n for n, c in deploy.cells_and_names() if isinstance(c, ChannelAffine)]
    # Only the PVTs keep exact affines: the norm1 of blocks whose 'same'-padded sr conv follows, PVTv2's stage
    # norms (a padded 3x3 conv follows them).
    assert (affines != []) == (family in ("pvt", "pvtv2"))
    assert all(isinstance(c, PRepBN) for n, c in net.cells_and_names() if n in affines)


def test_prepbnify_refuses_a_model_without_layernorm():
    with pytest.raises(ValueError, match="no nn.LayerNorm"):
        prepbnify(nn.SequentialCell([nn.Dense(3, 3)]), decay_steps=3)


def test_prepbnify_refuses_a_model_that_already_compiled_its_layernorm_graph():
    net = FAMILIES["vit"][0]()
    net.set_train(False)
    before = net(_input(32)).asnumpy()
    with pytest.raises(ValueError, match="already ran in GRAPH_MODE"):
        prepbnify(net, decay_steps=3)
    assert not any(isinstance(c, PRepBN) for _, c in net.cells_and_names())  # refused before changing anything
    np.testing.assert_array_equal(net(_input(32)).asnumpy(), before)
