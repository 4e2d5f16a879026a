"""Transformer MLP: fc1 -> exact GELU -> dropout -> fc2 -> dropout."""
from functools import lru_cache

import mindspore as ms
from mindspore import nn, ops

from .cpu_kernels import kernel, library_path
from .dense import dense, native_dense

__all__ = ["Mlp", "GELU", "ErfFreeGELU"]

SQRT_HALF = 0.7071067811865476
INV_SQRT_2PI = 0.3989422804014327


class GELU(nn.GELU):
    """Exact (erf) GELU, x · (1 + erf(x · √½)) / 2.

    An ``nn.GELU(approximate=False)`` with the same numbers to float rounding; ``ops.gelu`` divides by
    √2 on MindSpore's CPU backend, and its Div is one of the slowest element-wise kernels there. On
    float32 CPU tensors, in training and evaluation, one native pass forward and one backward (``cpu_kernels``, ~10x
    faster than MindSpore's Erf and its gradient).
    """

    def __init__(self):
        super().__init__(approximate=False)
        self.native_kernel = native_gelu(with_bias=False)

    def construct(self, x):
        if self.native_kernel is not None and x.dtype == ms.float32:
            return self.native_kernel(x)
        return exact_gelu(x)


def exact_gelu(x):
    """x · (1 + erf(x · √½)) / 2 in standard ops."""
    return x * (ops.erf(x * SQRT_HALF) + 1.0) * 0.5


def exact_gelu_of_sum(x, bias):
    """GELU(x + bias) in standard ops."""
    return exact_gelu(x + bias)


def exact_gelu_backward(x, dy):
    """dy · GELU'(x), GELU'(x) = (1 + erf(x · √½)) / 2 + x · exp(−x² / 2) / √(2π), in standard ops (the native
    backward's formula and gradient)."""
    return dy * ((ops.erf(x * SQRT_HALF) + 1.0) * 0.5 + x * ops.exp(x * x * -0.5) * INV_SQRT_2PI)


def exact_gelu_of_sum_backward(x, bias, dy):
    """The gradients of GELU(x + bias) for x and for the bias (summed over x's other axes), in standard ops."""
    dx = exact_gelu_backward(x + bias, dy)
    return dx, dx.reshape(-1, dx.shape[-1]).sum(0)


def native_gelu(with_bias):
    """The native ``ExactGelu`` kernel, of ``x`` or (``with_bias``) of ``(x, bias)``, differentiated by the native
    ``ExactGeluBackward``; None where native kernels are not used; one per library, shared by every cell."""
    return _gelu_kernel(library_path(), with_bias)


@lru_cache(maxsize=None)
def _gelu_kernel(path, with_bias):
    if path is None:
        return None
    if with_bias:
        backward = kernel("ExactGeluOfSumBackward", exact_gelu_of_sum_backward, out_shape=lambda x, b, _: (x, b),
                          out_dtype=lambda x, *_: (x, x))
        if backward is None:
            return None

        def bprop_with_bias(x, bias, out, dout):
            return backward(x, bias, dout)

        return kernel("ExactGeluOfSum", exact_gelu_of_sum, bprop=bprop_with_bias)
    backward = kernel("ExactGeluBackward", exact_gelu_backward)
    if backward is None:
        return None

    def bprop(x, out, dout):
        return (backward(x, dout),)

    return kernel("ExactGelu", exact_gelu, bprop=bprop)


class Mlp(nn.Cell):
    """fc1 -> exact GELU -> dropout -> fc2 -> dropout.

    On float32 CPU tensors, in training and evaluation, fc1 runs as its (native) matmul and the native GELU pass adds
    its bias (one BiasAdd kernel and one pass over the widest activation less per block, forward and backward), and
    the tokens stay 2-D from fc1 to fc2; ``use_standard_ops`` switches back to ``fc1`` then ``act``.
    """

    def __init__(self, in_features, hidden_features=None, out_features=None, drop=0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = dense(in_features, hidden_features)
        self.act = GELU()
        self.fc2 = dense(hidden_features, out_features)
        self.drop = nn.Dropout(p=drop) if drop > 0 else nn.Identity()
        self.native_kernel = native_gelu(with_bias=True)
        self.native_matmul = native_dense(has_bias=False)
        self.matmul_transposed_b = ops.MatMul(transpose_b=True)

    def construct(self, x):
        # isinstance: MindCV's O1 wraps fc1 in a cell without its weight (then fc1 runs as the wrapped cell)
        if self.native_kernel is not None and x.dtype == ms.float32 and isinstance(self.fc1, nn.Dense):
            shape = x.shape
            x = x.reshape(-1, shape[-1])
            hidden = (self.native_matmul(x, self.fc1.weight) if self.native_matmul is not None
                      else self.matmul_transposed_b(x, self.fc1.weight))
            hidden = self.native_kernel(hidden, self.fc1.bias)
            return self.drop(self.fc2(self.drop(hidden))).reshape(shape[:-1] + (-1,))
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ErfFreeGELU(nn.Cell):
    """Exact GELU without Erf (for ONNX, whose MindSpore exporter has no Erf): x/2 + |x|/2 · erf(|x|/√2), erf by
    Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7; Exp, Abs and Div only)."""

    def construct(self, x):
        ax = ops.abs(x)
        # ones / s rather than 1.0 / s: MindSpore exports the latter as Reciprocal, which ONNX export lacks.
        t = ops.ones_like(ax) / (1.0 + 0.3275911 * 0.7071067811865476 * ax)
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        return 0.5 * x + 0.5 * ax * (1.0 - poly * ops.exp(-0.5 * x * x))
