"""The native LayerNorm, RepBN / BatchNorm (training) and exact-GELU kernels equal the standard ops they replace,
forward and backward, and give the same numbers on any number of threads."""
import os
import shutil
import subprocess
import sys

import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn, ops

from helpers import WeightedSum
from slab_ms.layers import cpu_kernels
from slab_ms.layers.mlp import GELU, Mlp, exact_gelu_backward, exact_gelu_of_sum_backward, native_gelu
from slab_ms.layers.norm import LayerNorm, PRepBN, RepBN, TokenBatchNorm, get_norm_layer

pytestmark = [pytest.mark.skipif(shutil.which("g++") is None, reason="native kernels need g++"),
              pytest.mark.usefixtures("pynative")]
RNG = np.random.default_rng(0)


def _randomise(cell, rng, scale=0.5):
    for param in cell.trainable_params():
        param.set_data(Tensor((1.0 + rng.normal(0, scale, param.shape)).astype(np.float32)))


def _run(cell, x, weights, native):
    """Output, input gradient, parameter gradients and the Parameters afterwards of ``cell`` (training mode) with
    its native kernels on or off."""
    if not native:
        assert cpu_kernels.use_standard_ops(cell) >= 1
    params = cell.trainable_params()
    out = cell(x).asnumpy()
    dx, dparams = ms.grad(WeightedSum(cell, weights), grad_position=0, weights=params)(x)
    return [out, dx.asnumpy()] + [g.asnumpy() for g in dparams] + [p.asnumpy() for p in cell.get_parameters()]


def _compare(build, shape, rtol=1e-5):
    x = Tensor((RNG.normal(size=shape) * 2 + 0.5).astype(np.float32))
    weights = Tensor(RNG.normal(size=shape).astype(np.float32))
    runs = []
    for native in (True, False):
        cell = build().set_train(True)
        _randomise(cell, np.random.default_rng(1))
        runs.append(_run(cell, x, weights, native))
    assert np.abs(runs[1][0]).max() > 0.1 and np.abs(runs[1][1]).max() > 0.1  # output and input gradient
    for got, expected in zip(*runs):
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("shape", [(2, 7, 12), (3, 5, 20), (1, 197, 192), (130, 13)])
def test_native_layer_norm_equals_the_standard_ops(shape):
    """Rows of vector width and with a scalar tail, more rows than one 64-row block of dγ / dβ."""
    _compare(lambda: LayerNorm(shape[-1], epsilon=1e-6), shape)
    cell = LayerNorm(shape[-1])
    assert isinstance(cell, nn.LayerNorm) and cell.native_kernel is not None
    assert [p.name for p in cell.get_parameters()] == ["gamma", "beta"]  # checkpoints keep their names


@pytest.mark.parametrize("cls", [RepBN, TokenBatchNorm])
@pytest.mark.parametrize("shape", [(2, 7, 12), (3, 50, 20)])
def test_native_batch_norm_in_training_equals_the_standard_ops(cls, shape):
    """Output, gradients (x, γ, β, and η for RepBN) and the running statistics after two training calls (momentum
    0.9, unbiased running variance), against nn.BatchNorm1d on the transposed tokens."""
    _compare(lambda: cls(shape[-1]), shape)


def test_norm_eval_keeps_the_running_statistics_in_training():
    """A backbone's ``norm_eval`` sets the BN's use_batch_statistics False: RepBN then normalises with its running
    statistics and leaves them as they are, native kernels or not."""
    rep = RepBN(8)
    _randomise(rep, np.random.default_rng(2))
    rep.bn.use_batch_statistics = False
    rep.set_train(True)
    x = RNG.normal(size=(2, 5, 8)).astype(np.float32)
    a, b = rep.affine()
    np.testing.assert_allclose(rep(Tensor(x)).asnumpy(), x * a + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rep.bn.moving_mean.asnumpy(), np.zeros(8, np.float32))


def test_native_prepbn_mixture_trains_as_the_standard_ops():
    schedule_factory = get_norm_layer("prepbn", decay_steps=10)
    build = lambda: schedule_factory(16)  # noqa: E731 (both builds share one schedule: γ is the same)
    layer = build()
    assert isinstance(layer, PRepBN) and len(cpu_kernels.native_kernels(layer.norm1)) == 1
    ops.assign(layer.schedule.parameters[0], Tensor(4, layer.schedule.parameters[0].dtype))  # γ = 0.6
    _compare(build, (2, 9, 16))


@pytest.mark.parametrize("hidden", [32, 20])
def test_native_mlp_trains_as_the_standard_ops(hidden):
    """fc1's matmul, then the native GELU(x + bias) and its backward (dx and the bias's row sum), fc2 on 2-D tokens."""
    _compare(lambda: Mlp(12, hidden), (2, 70, 12))


class _BiasGelu(nn.Cell):
    def __init__(self):
        super().__init__()
        self.kernel = native_gelu(with_bias=True)

    def construct(self, x, bias, weights):
        return (self.kernel(x, bias) * weights).sum()


def test_native_gelu_backward_equals_its_formula_and_the_standard_gradient():
    x = np.concatenate([np.linspace(-10, 10, 2001), RNG.normal(0, 3, 999), [0.0, 50.0, -50.0]]).astype(np.float32)
    x = Tensor(x.reshape(3, 1001))
    weights = Tensor(RNG.normal(size=(3, 1001)).astype(np.float32))
    native = _run(GELU().set_train(True), x, weights, True)
    standard = _run(GELU().set_train(True), x, weights, False)
    np.testing.assert_allclose(native[1], standard[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(native[1], exact_gelu_backward(x, weights).asnumpy(), rtol=1e-5, atol=1e-6)
    bias = Tensor(RNG.normal(size=1001).astype(np.float32))
    dx, dbias = ms.grad(_BiasGelu(), grad_position=(0, 1))(x, bias, weights)
    expected_dx, expected_dbias = exact_gelu_of_sum_backward(x, bias, weights)
    np.testing.assert_allclose(dx.asnumpy(), expected_dx.asnumpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dbias.asnumpy(), expected_dbias.asnumpy(), rtol=1e-5, atol=1e-5)


class _GeluThenMlp(nn.Cell):
    def __init__(self):
        super().__init__()
        self.act = GELU()
        self.mlp = Mlp(8, 16)

    def construct(self, x):
        return self.mlp(self.act(x))


def test_a_graph_with_both_gelu_kernels_differentiates_as_the_standard_ops():
    """A GELU cell (GELU(x)) and an MLP (GELU(x + bias)) in one compiled graph: MindSpore keeps one bprop per Custom
    function name, so the two forms need names of their own (with one name the gradient failed to compile)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    x = Tensor(RNG.normal(size=(4, 8)).astype(np.float32))
    weights = Tensor(RNG.normal(size=(4, 8)).astype(np.float32))
    grads = []
    for native in (True, False):
        cell = _GeluThenMlp()
        _randomise(cell, np.random.default_rng(5))
        if not native:
            assert cpu_kernels.use_standard_ops(cell) >= 2
        grads.append(ms.grad(WeightedSum(cell, weights), grad_position=0)(x).asnumpy())
    assert np.abs(grads[1]).max() > 0.1
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-5 * np.abs(grads[1]).max())


def test_float16_takes_the_standard_ops():
    x = Tensor(RNG.normal(size=(2, 5, 8)).astype(np.float16))
    for cell in (LayerNorm(8).to_float(ms.float16), GELU()):
        assert cell.native_kernel is not None
        assert cell(x).dtype == ms.float16  # the native kernels refuse anything but float32


_THREADED_RUN = """
import sys
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from slab_ms.layers.mlp import Mlp
from slab_ms.layers.norm import LayerNorm, RepBN
ms.set_context(mode=ms.PYNATIVE_MODE)
rng = np.random.default_rng(0)
x = Tensor(rng.normal(size=(8, 1200, 64)).astype(np.float32))
out = {}
for name, cell in (("ln", LayerNorm(64)), ("repbn", RepBN(64)), ("mlp", Mlp(64, 256))):
    cell.set_train(True)
    for param in cell.trainable_params():
        param.set_data(Tensor(rng.normal(1, 0.5, param.shape).astype(np.float32)))
    weights = Tensor(rng.normal(size=x.shape).astype(np.float32))
    loss = lambda x, cell=cell, weights=weights: (cell(x) * weights).sum()
    dx, dparams = ms.grad(loss, grad_position=0, weights=cell.trainable_params())(x)
    out[name] = cell(x).asnumpy()
    out[name + "_dx"] = dx.asnumpy()
    for i, g in enumerate(dparams):
        out[f"{name}_d{i}"] = g.asnumpy()
np.savez(sys.argv[1], **out)
"""


def test_native_training_kernels_give_the_same_numbers_on_any_number_of_threads(tmp_path):
    """9600 rows (enough work for 2-3 threads in every kernel): the column sums of dγ, dβ, dη and the bias gradient
    span 150 blocks of 64 rows, shared out differently on 1 and 3 threads; every output is bitwise the same."""
    outputs = []
    for threads in ("1", "3"):
        env = dict(os.environ, SLAB_MS_NATIVE_THREADS=threads, PYTHONPATH=os.pathsep.join(sys.path))
        path = tmp_path / f"threads{threads}.npz"
        subprocess.run([sys.executable, "-c", _THREADED_RUN, str(path)], env=env, check=True, capture_output=True,
                       timeout=300)
        outputs.append(np.load(path))
    assert len(outputs[0].files) == 15
    for name in outputs[0].files:
        assert np.abs(outputs[0][name]).max() > 0.01, name
        np.testing.assert_array_equal(outputs[0][name], outputs[1][name], err_msg=name)


def test_a_training_step_with_native_kernels_equals_the_standard_ops():
    """SLAB-DeiT in training form (PRepBN's LayerNorm and RepBN, the MLP's GELU, the dense layers), compiled: the same
    loss, input and parameter gradients and running statistics with the native kernels as with the standard ops."""
    from slab_ms import create_model
    from slab_ms.layers import PRepBNSchedule
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(3)
    x = Tensor(rng.normal(size=(2, 3, 32, 32)).astype(np.float32))
    weights = Tensor(rng.normal(size=(2, 10)).astype(np.float32))
    runs = []
    for native in (True, False):
        net = create_model("slab_deit_tiny", num_classes=10, image_size=32, patch_size=4, embed_dim=24, depth=1,
                           num_heads=3, prepbn_decay_steps=10).set_train(True)
        _randomise(net, np.random.default_rng(4), scale=0.3)
        PRepBNSchedule.require(net).set(step=4)  # γ = 0.6: both sides of every PRepBN count
        if not native:
            # 10 norm / attention / GELU kernels; qkv, proj, fc1, fc2, the head and the MLP's fc1 matmul
            assert cpu_kernels.use_standard_ops(net) == 10 + 6
        names = [p.name for p in net.trainable_params()]
        loss, (dx, dparams) = ms.value_and_grad(WeightedSum(net, weights), grad_position=0,
                                                weights=net.trainable_params())(x)
        stats = [p.asnumpy() for p in net.get_parameters() if "moving" in p.name]
        runs.append([loss.asnumpy(), dx.asnumpy()] + [g.asnumpy() for g in dparams] + stats)
    assert len(runs[0]) == len(names) + 2 + 6 and "blocks.0.norm1.norm1.gamma" in names
    for got, expected in zip(*runs):
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
