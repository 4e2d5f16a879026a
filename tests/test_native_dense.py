"""The native Dense kernels (oneDNN's sgemm, the bias in the same call) equal ``nn.Dense``'s MatMul and BiasAdd,
forward and backward, and give the same numbers on any number of threads; the unfold convolution built on them equals
the Conv2d."""
import shutil

import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn

from helpers import WeightedSum, outputs_on_thread_counts
from slab_ms.layers import cpu_kernels
from slab_ms.layers import UnfoldConv2d
from slab_ms.layers.dense import Dense, dense, dense_backward_reference, native_dense

pytestmark = [pytest.mark.skipif(shutil.which("g++") is None or cpu_kernels.dnnl_library() is None,
                                 reason="native Dense needs g++ and MindSpore's oneDNN"),
              pytest.mark.usefixtures("pynative")]
RNG = np.random.default_rng(0)


def _run(cell, x, weights):
    out = cell(x).asnumpy()
    dx, dparams = ms.grad(WeightedSum(cell, weights), grad_position=0, weights=cell.trainable_params())(x)
    return [out, dx.asnumpy()] + [g.asnumpy() for g in dparams]


@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("shape, out_features", [((2, 7, 12), 20), ((1, 197, 48), 144), ((300, 40), 24)])
def test_native_dense_equals_the_standard_ops(shape, out_features, has_bias):
    """Fewer rows than outputs (the threads split columns) and more (they split rows), 3-D and 2-D input."""
    x = Tensor(RNG.normal(size=shape).astype(np.float32))
    weights = Tensor(RNG.normal(size=shape[:-1] + (out_features,)).astype(np.float32))
    runs = []
    for native in (True, False):
        cell = dense(shape[-1], out_features, has_bias=has_bias)
        rng = np.random.default_rng(1)
        for param in cell.trainable_params():
            param.set_data(Tensor(rng.normal(0, 0.5, param.shape).astype(np.float32)))
        assert cell.native_kernel is not None
        if not native:
            assert cpu_kernels.use_standard_ops(cell) == 1
        runs.append(_run(cell, x, weights))
    assert len(runs[0]) == 3 + has_bias  # output, dx, dw(, db)
    for got, expected in zip(*runs):
        assert np.abs(expected).max() > 0.1
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_the_backward_kernel_equals_its_formula():
    x, dy = (Tensor(RNG.normal(size=s).astype(np.float32)) for s in ((70, 12), (70, 20)))
    w, b = Tensor(RNG.normal(size=(20, 12)).astype(np.float32)), Tensor(RNG.normal(size=20).astype(np.float32))
    kernel = native_dense(has_bias=True)
    grads = ms.grad(lambda x, w, b: (kernel(x, w, b) * dy).sum(), grad_position=(0, 1, 2))(x, w, b)
    for got, expected in zip(grads, dense_backward_reference(x, w, b, dy)):
        np.testing.assert_allclose(got.asnumpy(), expected.asnumpy(), rtol=1e-5, atol=1e-5)


def test_dense_keeps_nn_dense_s_parameters_and_float16_takes_the_standard_ops():
    cell = dense(8, 4)
    assert isinstance(cell, nn.Dense) and isinstance(cell, Dense)
    assert [p.name for p in cell.get_parameters()] == ["weight", "bias"]  # checkpoints keep their names
    # to_float / AMP: in PyNative mode the ops of a float16 cell get float16 inputs, which the kernel refuses
    x = Tensor(RNG.normal(size=(3, 8)).astype(np.float32))
    assert cell.to_float(ms.float16)(x).dtype == ms.float16 and cell.native_kernel is None
    assert Dense(8, 4, activation="relu").native_kernel is None  # an activation keeps nn.Dense's path


@pytest.mark.parametrize("cin, cout, kernel, stride, padding, size",
                         [(3, 8, 7, 4, 2, (30, 26)), (6, 12, 3, 2, 1, (9, 14))])
def test_unfold_conv_equals_the_conv2d(cin, cout, kernel, stride, padding, size):
    """CSwin's stem (7×7, stride 4, padding 2) and merge (3×3, stride 2, padding 1) convs on maps of odd sizes: the
    unfold + native Dense product gives the Conv2d's output and gradients (input, weight, bias)."""
    x = Tensor(RNG.normal(size=(2, cin) + size).astype(np.float32))
    out_size = tuple((s + 2 * padding - kernel) // stride + 1 for s in size)
    weights = Tensor(RNG.normal(size=(2, cout) + out_size).astype(np.float32))
    runs = []
    for native in (True, False):
        conv = UnfoldConv2d(cin, cout, kernel, stride, padding)
        rng = np.random.default_rng(2)
        for param in conv.trainable_params():
            param.set_data(Tensor(rng.normal(0, 0.5, param.shape).astype(np.float32)))
        assert conv.native_kernel is not None and isinstance(conv, nn.Conv2d)
        if not native:
            assert cpu_kernels.use_standard_ops(conv) == 1
        runs.append(_run(conv, x, weights))
    assert runs[0][0].shape == (2, cout) + out_size
    for got, expected in zip(*runs):
        assert np.abs(expected).max() > 0.1
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


_THREADED_RUN = """
import sys
import numpy as np
import mindspore as ms
from mindspore import Tensor
from slab_ms.layers.dense import dense
ms.set_context(mode=ms.PYNATIVE_MODE)
rng = np.random.default_rng(0)
out = {}
for name, rows, cin, cout in (("rows", 1200, 64, 96), ("columns", 40, 256, 1024)):
    cell = dense(cin, cout)
    for param in cell.trainable_params():
        param.set_data(Tensor(rng.normal(0, 0.5, param.shape).astype(np.float32)))
    x = Tensor(rng.normal(size=(rows, cin)).astype(np.float32))
    weights = Tensor(rng.normal(size=(rows, cout)).astype(np.float32))
    loss = lambda x, cell=cell, weights=weights: (cell(x) * weights).sum()
    dx, (dw, db) = ms.grad(loss, grad_position=0, weights=cell.trainable_params())(x)
    out.update({name: cell(x).asnumpy(), name + "_dx": dx.asnumpy(), name + "_dw": dw.asnumpy(),
                name + "_db": db.asnumpy()})
np.savez(sys.argv[1], **out)
"""


def test_native_dense_gives_the_same_numbers_on_any_number_of_threads(tmp_path):
    """Products split by rows (1200 rows, 96 outputs) and by columns (40 rows, 1024 outputs) over 1 and 3 threads,
    and the bias gradient's 64-row blocks: every output bitwise the same."""
    outputs = outputs_on_thread_counts(_THREADED_RUN, tmp_path, "dense", ("1", "3"))
    assert len(outputs[0].files) == 8
    for name in outputs[0].files:
        assert np.abs(outputs[0][name]).max() > 0.01, name
        np.testing.assert_array_equal(outputs[0][name], outputs[1][name], err_msg=name)
