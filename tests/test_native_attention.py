"""The native attention kernels' backward passes (and the softmax attention's forward) equal the standard ops."""
import shutil

import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn, ops

from slab_ms import create_model
from slab_ms.layers import SimplifiedLinearAttention, cpu_kernels
from slab_ms.layers.attention import (Attention, simplified_linear_attention_qkv, sla_qkv_kernel,
                                      softmax_attention_kernel, softmax_attention_qkv)

from helpers import outputs_on_thread_counts

RNG = np.random.default_rng(0)
pytestmark = [pytest.mark.skipif(shutil.which("g++") is None, reason="native kernels need g++"),
              pytest.mark.usefixtures("pynative")]


def _randomise(cell, scale=0.5, seed=0):
    rng = np.random.default_rng(seed)
    for param in cell.trainable_params():
        param.set_data(Tensor(rng.normal(0, scale, param.shape).astype(np.float32)))


def _grad(fn, x, dout):
    return ops.GradOperation(sens_param=True)(lambda t: fn(t))(x, dout).asnumpy()


def _close(got, expected, rtol=1e-4):
    assert np.abs(expected).max() > 0.01
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-5 * np.abs(expected).max())


# (B, N, heads, head_dim): register-blocked products (head_dim 64, 16) and the scalar column tail (24, 8, 5); token
# counts off the 16-column score blocks, the 6-row product blocks and the 64-row query blocks (197, 70); one head;
# one token.
SHAPES = [(2, 197, 3, 64), (1, 70, 4, 16), (3, 17, 2, 24), (1, 5, 1, 8), (2, 1, 2, 5)]


@pytest.mark.parametrize("shape", SHAPES)
def test_native_softmax_attention_and_its_gradient_equal_the_standard_ops(shape):
    b, n, heads, head_dim = shape
    native = softmax_attention_kernel()
    assert native is not None
    qkv = Tensor(RNG.normal(0, 2, (b, n, 3, heads, head_dim)).astype(np.float32))  # peaked softmax rows
    dout = Tensor(RNG.normal(size=(b, n, heads, head_dim)).astype(np.float32))
    expected = softmax_attention_qkv(qkv).asnumpy()
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(native(qkv).asnumpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    expected_grad = _grad(softmax_attention_qkv, qkv, dout)
    assert np.abs(expected_grad).max() > 1.0
    if n > 1:  # with one token the softmax is 1: q and k get no gradient
        assert np.abs(expected_grad[:, :, :2]).max() > 0.1
    np.testing.assert_allclose(_grad(native, qkv, dout), expected_grad, rtol=1e-4,
                               atol=1e-5 * np.abs(expected_grad).max())


def test_native_softmax_attention_is_stable_for_large_scores():
    """Scores of several hundred (beyond float32's exp range) softmax like the standard ops: the row maximum is
    subtracted before the exponential."""
    qkv = Tensor(RNG.normal(0, 12, (1, 33, 3, 1, 16)).astype(np.float32))
    expected = softmax_attention_qkv(qkv).asnumpy()
    got = softmax_attention_kernel()(qkv).asnumpy()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4 * np.abs(expected).max())


# (B, H, W, heads, head_dim, kernel): register-blocked (64, 16) and scalar (8, 5) head widths, 3×3 to 7×7 convs,
# grids smaller than the kernel, one head, one image.
SLA_SHAPES = [(2, 14, 14, 3, 64, 5), (1, 3, 5, 1, 8, 3), (3, 4, 7, 2, 5, 5), (1, 6, 6, 2, 16, 7)]


@pytest.mark.parametrize("shape", SLA_SHAPES)
def test_native_sla_backward_equals_the_standard_ops(shape):
    """d qkv, d positional encoding, d DWC weight and bias of the native SLA backward against the standard ops' (q
    drawn around 0.5: a head whose ReLU(q) is all but zero has a tiny normaliser, and both forms then lose digits)."""
    b, h, w, heads, head_dim, k = shape
    native = sla_qkv_kernel()
    assert native is not None
    qkv = RNG.normal(size=(b, h, w, 3, heads, head_dim)).astype(np.float32)
    qkv[:, :, :, 0] += 0.5
    inputs = [Tensor(qkv), Tensor(RNG.normal(0, 0.5, (1, h, w, heads, head_dim)).astype(np.float32)),
              Tensor(RNG.normal(0, 0.5, (head_dim, 1, k, k)).astype(np.float32)),
              Tensor(RNG.normal(size=(head_dim,)).astype(np.float32))]
    dout = Tensor(RNG.normal(size=(b, h, w, heads, head_dim)).astype(np.float32))
    _close(native(*inputs).asnumpy(), simplified_linear_attention_qkv(*inputs).asnumpy(), rtol=1e-5)
    grad = ops.GradOperation(get_all=True, sens_param=True)
    expected = grad(simplified_linear_attention_qkv)(*inputs, dout)
    got = grad(lambda *args: native(*args))(*inputs, dout)
    assert len(got) == 4
    for g, e in zip(got, expected):
        _close(g.asnumpy(), e.asnumpy())


def _forward_and_parameter_grads(cell, x, hw):
    grad = ms.value_and_grad(lambda t: (cell(t, hw) ** 2).sum(), grad_position=0, weights=cell.trainable_params())
    loss, (dx, dparams) = grad(x)
    return [loss.asnumpy(), dx.asnumpy()] + [d.asnumpy() for d in dparams]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("layer", ["softmax", "sla"])
def test_attention_layers_run_native_forward_and_backward_like_the_standard_ops(layer, training):
    """The DeiT softmax attention and SLA (eval and training mode, SLA also on a grid other than the built one):
    output, input and parameter gradients, native vs standard."""
    if layer == "softmax":
        cell, args = Attention(24, num_heads=3, qkv_bias=True), [(2, 11, 24)]
    else:
        cell, args = SimplifiedLinearAttention(24, 3, (3, 4)), [(2, 12, 24), (2, 20, 24)]
    cell.set_train(training)
    _randomise(cell)
    kernels = cpu_kernels.native_kernels(cell)
    assert "native_kernel" in kernels or "native_qkv_kernel" in kernels  # SLA's forward takes the qkv one
    for shape in args:
        x = Tensor(RNG.normal(size=shape).astype(np.float32))
        hw = (3, 4) if shape[1] == 12 else (5, 4)
        native = _forward_and_parameter_grads(cell, x, hw)
        cpu_kernels.use_standard_ops(cell)
        standard = _forward_and_parameter_grads(cell, x, hw)
        for name, kernel in kernels.items():
            setattr(cell, name, kernel)
        assert not np.array_equal(native[1], standard[1])  # the native kernels ran: other rounding
        for got, expected in zip(native, standard):
            _close(got, expected)


def test_attention_cell_keeps_the_standard_ops_for_float16_and_attention_dropout():
    """float16 activations (mixed precision) take the standard ops (the same numbers with the kernel switched off),
    and so does attention dropout in training (two calls differ)."""
    half = Attention(16, num_heads=2).to_float(ms.float16).set_train(False)
    _randomise(half)
    x = Tensor(RNG.normal(size=(1, 9, 16)).astype(np.float16))
    got = half(x)
    assert got.dtype == ms.float16
    cpu_kernels.use_standard_ops(half)
    np.testing.assert_array_equal(got.asnumpy(), half(x).asnumpy())
    dropout = Attention(16, num_heads=2, attn_drop=0.5).set_train(True)
    _randomise(dropout)
    x = Tensor(RNG.normal(size=(1, 9, 16)).astype(np.float32))
    assert np.abs(dropout(x).asnumpy() - dropout(x).asnumpy()).max() > 1e-3  # the dropout ran, not the kernel


_THREADED_RUN = """
import sys
import numpy as np
import mindspore as ms
from mindspore import Tensor, ops
from slab_ms.layers.attention import sla_qkv_kernel, softmax_attention_kernel
ms.set_context(mode=ms.PYNATIVE_MODE)
rng = np.random.default_rng(0)
images = int(sys.argv[2])
softmax, sla = softmax_attention_kernel(), sla_qkv_kernel()
qkv = Tensor(rng.normal(0, 2, (images, 70, 3, 3, 16)).astype(np.float32))
dout = Tensor(rng.normal(size=(images, 70, 3, 16)).astype(np.float32))
grad = ops.GradOperation(sens_param=True)(lambda t: softmax(t))(qkv, dout)
sla_inputs = (qkv.reshape(images, 7, 10, 3, 3, 16), Tensor(rng.normal(size=(1, 7, 10, 3, 16)).astype(np.float32)),
              Tensor(rng.normal(size=(16, 1, 5, 5)).astype(np.float32)), Tensor(rng.normal(size=16).astype(np.float32)))
sla_grads = ops.GradOperation(get_all=True, sens_param=True)(lambda *a: sla(*a))(
    *sla_inputs, dout.reshape(images, 7, 10, 3, 16))
np.savez(sys.argv[1], out=softmax(qkv).asnumpy(), grad=grad.asnumpy(),
         **{f"sla{i}": g.asnumpy() for i, g in enumerate(sla_grads)})
"""


def test_native_attention_gives_the_same_numbers_on_any_number_of_threads(tmp_path):
    """Softmax attention of one image (three heads of two query blocks) and of three images, SLA's backward of three
    images (per-image parameter gradients added in order): on 1 and 2 threads, bitwise equal numbers."""
    for images in ("1", "3"):
        outputs = outputs_on_thread_counts(_THREADED_RUN, tmp_path, images, ("1", "2"))
        for name in ("out", "grad", "sla0", "sla1", "sla2", "sla3"):
            assert np.abs(outputs[0][name]).max() > 0.1
            np.testing.assert_array_equal(outputs[0][name], outputs[1][name])


class _Loss(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x):
        return (self.net(x) ** 2).sum()


@pytest.mark.parametrize("name", ["deit_tiny_prepbn", "slab_deit_tiny"])
def test_deit_training_step_with_the_native_attention_matches_the_standard_ops(name):
    """A compiled DeiT in training mode (softmax attention or SLA): the loss and every parameter gradient with the
    native attention equal those of the standard ops."""
    ms.set_context(mode=ms.GRAPH_MODE)
    results = []
    for native in (True, False):
        net = create_model(name, num_classes=10, image_size=32, patch_size=8, embed_dim=24, depth=2,
                           num_heads=3).set_train(True)
        _randomise(net, 0.3, seed=5)
        assert cpu_kernels.native_kernels(net.blocks[0].attn)
        if not native:
            cpu_kernels.use_standard_ops(net)
        x = Tensor(np.random.default_rng(6).normal(size=(2, 3, 32, 32)).astype(np.float32))
        loss, grads = nn.ForwardValueAndGrad(_Loss(net), weights=net.trainable_params())(x)
        results.append([loss.asnumpy()] + [g.asnumpy() for g in grads])
    for got, expected in zip(*results):
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
