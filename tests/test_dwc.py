"""SLA's depth-wise conv as matmuls (layers.attention.depthwise_conv_as_matmuls) equals the Conv2d it replaces."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn

from slab_ms.layers import SimplifiedLinearAttention
from slab_ms.layers.attention import banded_column_index, depthwise_conv_as_matmuls, row_shift_matrix

pytestmark = pytest.mark.usefixtures("pynative")


def random_conv(channels, kernel_size, seed):
    rng = np.random.default_rng(seed)
    return nn.Conv2d(channels, channels, kernel_size, group=channels, pad_mode="pad", padding=kernel_size // 2,
                     has_bias=True,
                     weight_init=Tensor(rng.normal(0, 1 / kernel_size, (channels, 1, kernel_size, kernel_size))
                                        .astype(np.float32)),
                     bias_init=Tensor(rng.normal(0, 1, channels).astype(np.float32)))


def conv_on_tokens(conv, tokens, hw):
    b, n, c = tokens.shape
    grid = tokens.reshape(b, hw[0], hw[1], c).transpose(0, 3, 1, 2)
    return conv(grid).transpose(0, 2, 3, 1).reshape(b, n, c)


def matmuls_on_tokens(conv, tokens, hw):
    k = conv.kernel_size[0]
    return depthwise_conv_as_matmuls(tokens, conv.weight, conv.bias, hw, Tensor(banded_column_index(hw[1], k)),
                                     Tensor(row_shift_matrix(hw[0], k)))


# DeiT's 14x14, non-square maps, CSwin-like stripes, maps smaller than the kernel, a 3x3 kernel.
@pytest.mark.parametrize("hw, kernel_size", [((14, 14), 5), ((4, 7), 5), ((9, 2), 5), ((1, 6), 5), ((2, 3), 5),
                                             ((5, 8), 3)])
def test_matmul_form_equals_the_depthwise_conv(hw, kernel_size):
    conv = random_conv(6, kernel_size, seed=hw[0] * 10 + hw[1])
    tokens = Tensor(np.random.default_rng(1).standard_normal((3, hw[0] * hw[1], 6), dtype=np.float32))
    expected = conv_on_tokens(conv, tokens, hw).asnumpy()
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(matmuls_on_tokens(conv, tokens, hw).asnumpy(), expected, rtol=0, atol=1e-5)


def test_matmul_form_has_the_conv_gradients():
    """The training form computes the matmul form, so its gradients must be the conv's."""
    hw = (6, 5)
    conv = random_conv(4, 5, seed=3)
    tokens = Tensor(np.random.default_rng(2).standard_normal((2, 30, 4), dtype=np.float32))
    cotangent = Tensor(np.random.default_rng(4).standard_normal((2, 30, 4), dtype=np.float32))
    grads = {}
    for name, forward in (("conv", conv_on_tokens), ("matmuls", matmuls_on_tokens)):
        loss = lambda x, f=forward: (f(conv, x, hw) * cotangent).sum()  # noqa: E731
        grad_x, (grad_w, grad_b) = ms.value_and_grad(loss, grad_position=0, weights=conv.trainable_params())(tokens)[1]
        grads[name] = [grad_x.asnumpy(), grad_w.asnumpy(), grad_b.asnumpy()]
    for got, expected in zip(grads["matmuls"], grads["conv"]):
        assert np.abs(expected).max() > 1.0
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def conv_per_head(conv, tokens, hw, heads):
    """The shared conv applied to each head's channel block of (B, N, heads·c) tokens."""
    c = tokens.shape[-1] // heads
    return np.concatenate([conv_on_tokens(conv, tokens[:, :, i * c:(i + 1) * c], hw).asnumpy() for i in range(heads)],
                          axis=-1)


def test_attention_uses_matmuls_on_its_grid_and_the_conv_elsewhere():
    sla = SimplifiedLinearAttention(12, 2, (4, 6)).set_train(True)  # eval mode may take the native kernel instead
    sla.dwc.weight.set_data(random_conv(6, 5, seed=5).weight.value())
    sla.dwc.bias.set_data(Tensor(np.random.default_rng(6).normal(0, 1, 6).astype(np.float32)))
    rng = np.random.default_rng(7)
    on_grid, off_grid = (Tensor(rng.standard_normal((2, n, 12), dtype=np.float32)) for n in (24, 15))
    expected_on, expected_off = conv_per_head(sla.dwc, on_grid, (4, 6), 2), conv_per_head(sla.dwc, off_grid, (3, 5), 2)
    conv_calls = []
    sla.dwc.register_forward_hook(lambda cell, inputs, output: conv_calls.append(output.shape))
    np.testing.assert_allclose(sla._dwc_tokens(on_grid, (4, 6)).asnumpy(), expected_on, atol=1e-5)
    assert conv_calls == []
    np.testing.assert_allclose(sla._dwc_tokens(off_grid, (3, 5)).asnumpy(), expected_off, atol=1e-5)
    assert conv_calls == [(4, 6, 3, 5)]  # the other grid ran the Conv2d, one image per (batch, head)


def test_matmul_form_shares_the_filters_between_channel_blocks():
    """Tokens with g·c channels and c filters: block i of the channels is convolved with the same c filters."""
    conv = random_conv(4, 5, seed=8)
    tokens = Tensor(np.random.default_rng(9).standard_normal((2, 35, 12), dtype=np.float32))
    np.testing.assert_allclose(matmuls_on_tokens(conv, tokens, (5, 7)).asnumpy(),
                               conv_per_head(conv, tokens, (5, 7), 3), rtol=0, atol=1e-5)


def test_attention_checkpoint_names_are_unchanged():
    """The matmul constants are not parameters: the official dwc.weight / dwc.bias stay the only DWC state."""
    names = sorted(name for name, _ in SimplifiedLinearAttention(12, 2, (4, 6)).parameters_and_names())
    assert names == ["dwc.bias", "dwc.weight", "positional_encoding", "proj.bias", "proj.weight", "qkv.bias",
                     "qkv.weight"]


def test_even_kernel_is_refused():
    with pytest.raises(ValueError, match="odd kernel_size"):
        SimplifiedLinearAttention(12, 2, (4, 6), kernel_size=4)
