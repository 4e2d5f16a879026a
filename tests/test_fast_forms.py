"""The faster formulations equal the straightforward ones they replace (numpy references or MindSpore ops)."""
import math
import shutil

import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn, ops

from slab_ms import create_model, reparameterize_model
from slab_ms.layers import SimplifiedLinearAttention, cpu_kernels
from slab_ms.layers.attention import head_block_mask, head_indicator, kv_first_attention
from slab_ms.layers.mlp import GELU, Mlp, exact_gelu
from slab_ms.layers.patch_embed import PatchConv2d
from slab_ms.models.cswin import LePEConv, grid_to_tokens, tokens_to_grid
from slab_ms.models.swin import cyclic_shift, window_order, window_partition, window_reverse

from helpers import outputs_on_thread_counts

pytestmark = pytest.mark.usefixtures("pynative")
RNG = np.random.default_rng(0)


def test_gelu_is_the_exact_erf_gelu():
    x = np.concatenate([np.linspace(-8, 8, 2001), RNG.normal(0, 3, 1000)]).astype(np.float32)
    expected = np.array([v * (1 + math.erf(v / math.sqrt(2))) / 2 for v in x.astype(np.float64)])
    gelu = GELU()
    cpu_kernels.use_standard_ops(gelu)  # the standard ops (float32 CPU tensors may take the native kernel)
    got = gelu(Tensor(x)).asnumpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, nn.GELU(approximate=False)(Tensor(x)).asnumpy(), rtol=1e-6, atol=1e-7)
    assert isinstance(GELU(), nn.GELU)  # ONNX export swaps nn.GELU cells for an Erf-free form


@pytest.mark.parametrize("hw", [(8, 12), (9, 13)], ids=["divisible", "cropped"])
def test_patch_matmul_tokens_equal_the_conv(hw):
    conv = PatchConv2d(3, 5, 4)
    conv.bias.set_data(Tensor(RNG.normal(size=5).astype(np.float32)))
    x = RNG.normal(size=(2, 3) + hw).astype(np.float32)
    reference = nn.Conv2d(3, 5, 4, stride=4, pad_mode="valid", has_bias=True, weight_init=conv.weight.value(),
                          bias_init=conv.bias.value())(Tensor(x)).asnumpy()
    expected = reference.reshape(2, 5, -1).transpose(0, 2, 1)
    tokens, grid = conv.tokens(Tensor(x))
    assert grid == (hw[0] // 4, hw[1] // 4)
    np.testing.assert_allclose(tokens.asnumpy(), expected, atol=1e-5)
    np.testing.assert_allclose(conv(Tensor(x)).asnumpy(), reference, atol=1e-5)
    token_map = Tensor(x.reshape(2, 3, -1).transpose(0, 2, 1).copy())
    from_tokens, grid = conv.tokens_from_tokens(token_map, hw)
    assert grid == (hw[0] // 4, hw[1] // 4)
    np.testing.assert_allclose(from_tokens.asnumpy(), expected, atol=1e-5)


def test_head_masks():
    indicator = head_indicator(3, 2)
    assert indicator.shape == (6, 3) and (indicator.sum(axis=0) == 2).all() and (indicator.sum(axis=1) == 1).all()
    mask = head_block_mask(3, 2)
    assert mask.shape == (6, 6) and mask.sum() == 12 and mask[1, 0] == 1 and mask[2, 1] == 0


def _per_head_sla(q, k, v, pos, heads):
    """ReLU(Q)(ReLU(K)ᵀ V) / (ReLU(Q) Σ ReLU(K) + 1e-6) head by head in float64 (no depth-wise conv)."""
    k = k + pos
    b, n, c = q.shape
    d = c // heads
    out = np.zeros((b, n, c))
    for i in range(heads):
        sl = slice(i * d, (i + 1) * d)
        qh, kh, vh = np.maximum(q[:, :, sl], 0), np.maximum(k[:, :, sl], 0), v[:, :, sl]
        out[:, :, sl] = qh @ (kh.transpose(0, 2, 1) @ vh) / (qh @ kh.sum(axis=1)[:, :, None] + 1e-6)
    return out


@pytest.mark.parametrize("heads", [1, 3, 4])
def test_block_diagonal_sla_equals_per_head_sla(heads):
    hw, dim = (5, 6), 8 * heads  # 30 tokens > head_dim 8: the Kᵀ V-first path
    sla = SimplifiedLinearAttention(dim, heads, hw)
    pos = RNG.normal(0, 0.3, (1, 30, dim)).astype(np.float32)
    sla.positional_encoding.set_data(Tensor(pos))
    q, k, v = (RNG.normal(size=(2, 30, dim)).astype(np.float32) for _ in range(3))
    got = kv_first_attention(ops.relu(Tensor(q)), ops.relu(Tensor(k + pos)), Tensor(v), heads, sla.head_mask,
                             sla.head_indicator, sla.eps).asnumpy()
    np.testing.assert_allclose(got, _per_head_sla(q, k, v, pos, heads), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("resolution, window, shift", [((8, 8), 4, 0), ((8, 8), 4, 2), ((12, 8), 4, 2), ((6, 6), 6, 3)])
def test_window_order_is_shift_then_partition(resolution, window, shift):
    h, w = resolution
    x = RNG.normal(size=(2, h, w, 3)).astype(np.float32)
    shifted = cyclic_shift(Tensor(x), -shift) if shift else Tensor(x)
    expected = window_partition(shifted, window).asnumpy()
    order = window_order(resolution, window, shift)
    tokens = x.reshape(2, h * w, 3)
    np.testing.assert_array_equal(tokens[:, order].reshape(expected.shape), expected)
    back = tokens[:, order][:, np.argsort(order)]
    np.testing.assert_array_equal(back, tokens)
    reversed_ = window_reverse(Tensor(expected), window, h, w)
    if shift:
        reversed_ = cyclic_shift(reversed_, shift)
    np.testing.assert_array_equal(reversed_.asnumpy(), x)


# ------------------------------------------------------------------ native CPU kernels (eval mode)
def test_native_kernels_are_built_where_gpp_exists():
    assert (cpu_kernels.library_path() is not None) == (shutil.which("g++") is not None)
    assert (GELU().native_kernel is not None) == (shutil.which("g++") is not None)


def test_native_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("SLAB_MS_NATIVE_KERNELS", "0")
    assert cpu_kernels.kernel("ExactGelu", exact_gelu) is None and GELU().native_kernel is None


needs_native = pytest.mark.skipif(shutil.which("g++") is None, reason="native kernels need g++")


@needs_native
def test_native_gelu_is_the_exact_erf_gelu():
    x = np.concatenate([np.linspace(-8, 8, 2001), RNG.normal(0, 3, 1003), [0.0, -0.0, 1e-30, 50.0, -50.0]])
    x = x.astype(np.float32).reshape(1, -1)  # 3009 values: the vector loop and its scalar tail
    expected = np.array([v * (1 + math.erf(v / math.sqrt(2))) / 2 for v in x[0].astype(np.float64)])
    gelu = GELU().set_train(False)
    native = gelu(Tensor(x)).asnumpy()[0]
    # erf within 4.3e-7 (a few float32 ulps of 1): |ΔGELU| ≤ 2.2e-7·|x| + rounding
    assert np.all(np.abs(native - expected) <= 2.2e-7 * np.abs(x[0]) + 1e-6 * np.abs(expected) + 1e-7)
    standard = GELU()
    assert cpu_kernels.use_standard_ops(standard) == 1
    standard = standard(Tensor(x)).asnumpy()[0]
    np.testing.assert_allclose(native, standard, rtol=1e-6, atol=1e-6)


def _standard_ops(cell, *args, kernels=None):
    """``cell`` run with its native kernels (or those named in ``kernels``) switched off (PyNative mode: no cached
    graph)."""
    names = kernels or list(cpu_kernels.native_kernels(cell))
    saved = {name: getattr(cell, name) for name in names}
    assert saved and all(kernel is not None for kernel in saved.values())
    for name in names:
        setattr(cell, name, None)
    try:
        return cell(*args).asnumpy()
    finally:
        for name, kernel in saved.items():
            setattr(cell, name, kernel)


@needs_native
@pytest.mark.parametrize("hw, heads, head_dim", [((6, 7), 3, 8), ((5, 5), 2, 16), ((3, 9), 2, 5), ((2, 3), 1, 32),
                                                 ((24, 25), 2, 16), ((2, 131), 1, 16)])
def test_native_sla_equals_the_standard_ops(hw, heads, head_dim):
    """The register-blocked (head_dim % 16 == 0) and scalar paths of the native kernel, token counts not a multiple
    of its 6-row block, N ≤ head_dim (the standard ops then take (Q Kᵀ) V), several 512-token chunks of Kᵀ V, rows
    wider than a 128-token block, and a grid other than the built one."""
    sla = SimplifiedLinearAttention(heads * head_dim, heads, hw).set_train(False)
    for param in sla.get_parameters():
        param.set_data(Tensor(RNG.normal(0, 0.5, param.shape).astype(np.float32)))
    for grid in (hw, (hw[1] + 1, hw[0])):
        x = Tensor(RNG.normal(size=(2, grid[0] * grid[1], heads * head_dim)).astype(np.float32))
        standard = _standard_ops(sla, x, grid)
        assert np.abs(standard).max() > 1.0
        # the kernel on the packed qkv projection, then the one on separate q, k, v (PVT's and CSwin's attend)
        for native in (sla(x, grid).asnumpy(), _standard_ops(sla, x, grid, kernels=["native_qkv_kernel"])):
            np.testing.assert_allclose(native, standard, rtol=1e-5, atol=1e-5 * np.abs(standard).max())


@needs_native
@pytest.mark.parametrize("hidden", [32, 20])  # vector rows, and rows with a scalar tail
def test_native_mlp_adds_the_fc1_bias_in_the_gelu_pass(hidden):
    mlp = Mlp(12, hidden).set_train(False)
    for param in mlp.get_parameters():
        param.set_data(Tensor(RNG.normal(size=param.shape).astype(np.float32)))
    x = Tensor(RNG.normal(size=(2, 7, 12)).astype(np.float32))
    expected = mlp.fc2(exact_gelu(mlp.fc1(x))).asnumpy()
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(mlp(x).asnumpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@needs_native
def test_native_lepe_equals_the_conv2d():
    lepe = LePEConv(12).set_train(False)
    for param in lepe.get_parameters():
        param.set_data(Tensor(RNG.normal(size=param.shape).astype(np.float32)))
    window = (4, 9)  # wide enough for the kernel's four-pixel blocks and the per-pixel edges
    v = Tensor(RNG.normal(size=(3, 36, 12)).astype(np.float32))
    expected = lepe.conv2d(tokens_to_grid(v, window), lepe.weight)
    expected = grid_to_tokens(lepe.bias_add(expected, lepe.bias)).asnumpy()
    np.testing.assert_allclose(lepe(v, window).asnumpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_standard_ops(lepe, v, window), expected, rtol=1e-5, atol=1e-5)


_THREADED_RUN = """
import sys
import numpy as np
import mindspore as ms
from mindspore import Tensor
from slab_ms.layers import SimplifiedLinearAttention
from slab_ms.layers.mlp import GELU
from slab_ms.models.cswin import LePEConv

ms.set_context(mode=ms.PYNATIVE_MODE)
rng = np.random.default_rng(0)
cells = [SimplifiedLinearAttention(32, 2, (24, 24)), GELU(), LePEConv(32)]
for cell in cells:
    cell.set_train(False)
    assert cell.native_kernel is not None
    for param in cell.get_parameters():
        param.set_data(Tensor(rng.normal(0, 0.5, param.shape).astype(np.float32)))
x = Tensor(rng.normal(size=(int(sys.argv[2]), 576, 32)).astype(np.float32))
np.savez(sys.argv[1], sla=cells[0](x, (24, 24)).asnumpy(), gelu=cells[1](x).asnumpy(),
         lepe=cells[2](x, (24, 24)).asnumpy())
"""


@needs_native
def test_native_kernels_give_the_same_numbers_on_any_number_of_threads(tmp_path):
    """SLAB_MS_NATIVE_THREADS splits each kernel's work (these shapes are large enough for 2-3 threads); every item is
    computed the same way on any thread, so the outputs are bitwise equal. Four images give the SLA kernel's
    image-per-thread path on 3 threads, two images its shared-image path (the 576 tokens make two Kᵀ V chunks)."""
    for images in ("4", "2"):
        outputs = outputs_on_thread_counts(_THREADED_RUN, tmp_path, images, ("1", "3"))
        for name in ("sla", "gelu", "lepe"):
            assert np.abs(outputs[0][name]).max() > 0.1
            np.testing.assert_array_equal(outputs[0][name], outputs[1][name])


@needs_native
def test_deploy_model_with_native_kernels_matches_standard_ops_and_exports_without_them(tmp_path):
    ms.set_context(mode=ms.GRAPH_MODE)
    net = create_model("slab_deit_tiny", num_classes=10, image_size=32, patch_size=4, embed_dim=24, depth=1,
                       num_heads=3).set_train(False)
    for param in net.trainable_params():
        param.set_data(Tensor(RNG.normal(0, 0.5, param.shape).astype(np.float32)))
    x = Tensor(RNG.normal(size=(2, 3, 32, 32)).astype(np.float32))
    deploy = reparameterize_model(net)
    native = deploy(x).asnumpy()
    # the SLA layer (two forms), the MLP (fc1 bias + GELU, fc1's matmul), its GELU; qkv, proj, fc1, fc2, the head
    assert cpu_kernels.use_standard_ops(deploy) == 5 + 5
    standard = deploy(x).asnumpy()
    assert np.abs(standard).max() > 1.0
    np.testing.assert_allclose(native, standard, rtol=1e-5, atol=1e-5 * np.abs(standard).max())
    ms.export(deploy, x, file_name=str(tmp_path / "m"), file_format="MINDIR")
    with open(tmp_path / "m.mindir", "rb") as f:
        graph = f.read()
    assert b"Erf" in graph and b"Custom" not in graph and b"cpu_kernels" not in graph


class _SquaredLogits(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x):
        return (self.net(x) ** 2).sum()


@needs_native
def test_an_eval_mode_network_with_native_kernels_differentiates_as_the_standard_ops():
    """Gradients through eval-mode cells (input saliency, frozen stages under a trainer) are the standard ops': the
    same input and parameter gradients as with the kernels switched off."""
    ms.set_context(mode=ms.GRAPH_MODE)
    grads = []
    for native in (True, False):
        net = create_model("slab_deit_tiny", num_classes=10, image_size=32, patch_size=4, embed_dim=24, depth=1,
                           num_heads=3).set_train(False)
        rng = np.random.default_rng(3)
        for param in net.trainable_params():
            param.set_data(Tensor(rng.normal(0, 0.5, param.shape).astype(np.float32)))
        if not native:
            # as in deploy form (10), and each PRepBN's LayerNorm and RepBN
            assert cpu_kernels.use_standard_ops(net) == 16

        x = Tensor(rng.normal(size=(2, 3, 32, 32)).astype(np.float32))
        names = [p.name for p in net.trainable_params()]  # before the wrapper prefixes them
        dx, dparams = ms.grad(_SquaredLogits(net), grad_position=0, weights=net.trainable_params())(x)
        named = dict(zip(names, dparams))
        grads.append([dx.asnumpy()] + [named[f"blocks.0.{name}"].asnumpy() for name in (
            "attn.dwc.weight", "attn.positional_encoding", "attn.qkv.weight", "mlp.fc1.weight", "mlp.fc1.bias")])
    for native, standard in zip(*grads):
        assert np.abs(standard).max() > 0
        np.testing.assert_allclose(native, standard, rtol=1e-4, atol=1e-5 * np.abs(standard).max())
