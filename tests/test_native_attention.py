"""The native softmax attention kernel (forward and backward) equals the standard ops it replaces."""
import os
import shutil
import subprocess
import sys

import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn, ops

from slab_ms import create_model
from slab_ms.layers import cpu_kernels
from slab_ms.layers.attention import Attention, softmax_attention_kernel, softmax_attention_qkv

RNG = np.random.default_rng(0)
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="native kernels need g++")


@pytest.fixture(autouse=True)
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


def _randomise(cell, scale=0.5, seed=0):
    rng = np.random.default_rng(seed)
    for param in cell.trainable_params():
        param.set_data(Tensor(rng.normal(0, scale, param.shape).astype(np.float32)))


def _grad(fn, x, dout):
    return ops.GradOperation(sens_param=True)(lambda t: fn(t))(x, dout).asnumpy()


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


def _forward_and_parameter_grads(cell, x):
    grad = ms.value_and_grad(lambda t: (cell(t) ** 2).sum(), grad_position=0, weights=cell.trainable_params())
    loss, (dx, dparams) = grad(x)
    return [loss.asnumpy(), dx.asnumpy()] + [d.asnumpy() for d in dparams]


@pytest.mark.parametrize("training", [False, True])
def test_attention_cell_runs_native_forward_and_backward_like_the_standard_ops(training):
    """The DeiT attention (eval and training mode): output, input and parameter gradients, native vs standard."""
    cell = Attention(24, num_heads=3, qkv_bias=True).set_train(training)
    _randomise(cell)
    x = Tensor(RNG.normal(size=(2, 11, 24)).astype(np.float32))
    native = _forward_and_parameter_grads(cell, x)
    assert cpu_kernels.use_standard_ops(cell) == 1
    standard = _forward_and_parameter_grads(cell, x)
    for got, expected in zip(native, standard):
        assert np.abs(expected).max() > 0.01
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


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
from slab_ms.layers.attention import softmax_attention_kernel
ms.set_context(mode=ms.PYNATIVE_MODE)
rng = np.random.default_rng(0)
native = softmax_attention_kernel()
qkv = Tensor(rng.normal(0, 2, (int(sys.argv[2]), 70, 3, 3, 16)).astype(np.float32))
dout = Tensor(rng.normal(size=(int(sys.argv[2]), 70, 3, 16)).astype(np.float32))
grad = ops.GradOperation(sens_param=True)(lambda t: native(t))(qkv, dout)
np.savez(sys.argv[1], out=native(qkv).asnumpy(), grad=grad.asnumpy())
"""


def test_native_softmax_attention_gives_the_same_numbers_on_any_number_of_threads(tmp_path):
    """One image's three heads of two query blocks, and three images: split over 1 and 2 threads, bitwise equal
    outputs and gradients."""
    for images in ("1", "3"):
        outputs = []
        for threads in ("1", "2"):
            env = dict(os.environ, SLAB_MS_NATIVE_THREADS=threads, PYTHONPATH=os.pathsep.join(sys.path))
            path = tmp_path / f"threads{threads}_{images}.npz"
            subprocess.run([sys.executable, "-c", _THREADED_RUN, str(path), images], env=env, check=True,
                           capture_output=True, timeout=300)
            outputs.append(np.load(path))
        for name in ("out", "grad"):
            assert np.abs(outputs[0][name]).max() > 0.1
            np.testing.assert_array_equal(outputs[0][name], outputs[1][name])


class _Loss(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x):
        return (self.net(x) ** 2).sum()


def test_deit_training_step_with_the_native_attention_matches_the_standard_ops():
    """A compiled DeiT (RepBN + softmax attention) in training mode: the loss and every parameter gradient with the native
    attention equal those of the standard ops."""
    ms.set_context(mode=ms.GRAPH_MODE)
    results = []
    for native in (True, False):
        net = create_model("deit_tiny_prepbn", num_classes=10, image_size=32, patch_size=8, embed_dim=24, depth=2,
                           num_heads=3).set_train(True)
        _randomise(net, 0.3, seed=5)
        assert len(cpu_kernels.native_kernels(net.blocks[0].attn)) == 1
        if not native:
            cpu_kernels.use_standard_ops(net)
        x = Tensor(np.random.default_rng(6).normal(size=(2, 3, 32, 32)).astype(np.float32))
        loss, grads = nn.ForwardValueAndGrad(_Loss(net), weights=net.trainable_params())(x)
        results.append([loss.asnumpy()] + [g.asnumpy() for g in grads])
    for got, expected in zip(*results):
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
