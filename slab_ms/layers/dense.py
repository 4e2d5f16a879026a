"""Dense layers: ``nn.Dense`` with the reference's initialisation, run on float32 CPU tensors as one native sgemm
forward and two backward."""
from functools import lru_cache

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import TruncatedNormal

from .cpu_kernels import Float32Kernels, dnnl_library, kernel, library_path

__all__ = ["Dense", "dense", "native_dense"]


class Dense(Float32Kernels, nn.Dense):
    """``nn.Dense`` (the same parameters, checkpoints and folds) that on float32 CPU tensors runs as one native kernel:
    the sgemm of the oneDNN library MindSpore ships, with the bias added in the same call (one kernel instead of
    MatMul and BiasAdd); its backward is two sgemms and a column sum. Other dtypes and devices, an activation, a cell
    set to float16 and ``use_standard_ops`` take ``nn.Dense``'s own path."""

    def __init__(self, in_channels, out_channels, weight_init=None, bias_init=None, has_bias=True, activation=None,
                 dtype=ms.float32):
        super().__init__(in_channels, out_channels, weight_init=weight_init, bias_init=bias_init, has_bias=has_bias,
                         activation=activation, dtype=dtype)
        self.native_kernel = native_dense(has_bias) if activation is None and dtype == ms.float32 else None

    def construct(self, x):
        if self.native_kernel is None or x.dtype != ms.float32:
            return super().construct(x)
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        y = self.native_kernel(x, self.weight, self.bias) if self.has_bias else self.native_kernel(x, self.weight)
        return y.reshape(shape[:-1] + (-1,))


def dense(in_channels, out_channels, has_bias=True):
    """Dense with trunc-normal(0.02) weight and zero bias, as every Linear of the reference."""
    return Dense(in_channels, out_channels, weight_init=TruncatedNormal(0.02), bias_init="zeros", has_bias=has_bias)


def dense_reference(x, weight, bias):
    """x·weightᵀ + bias in standard ops."""
    return ops.matmul(x, weight.T) + bias


def matmul_reference(x, weight):
    """x·weightᵀ in standard ops."""
    return ops.matmul(x, weight.T)


def dense_backward_reference(x, weight, bias, dy):
    """The gradients of ``dense_reference`` for x, the weight and the bias, in standard ops."""
    dx, dweight = matmul_backward_reference(x, weight, dy)
    return dx, dweight, dy.sum(0)


def matmul_backward_reference(x, weight, dy):
    """The gradients of ``matmul_reference`` for x and the weight, in standard ops."""
    return ops.matmul(dy, weight), ops.matmul(dy.T, x)


def native_dense(has_bias):
    """The native ``Dense`` kernel of ``(x, weight[, bias])`` (x 2-D, weight as ``nn.Dense`` keeps it),
    differentiated by the native ``DenseBackward``; None where native kernels or MindSpore's oneDNN are not used.
    One per library, shared by every cell."""
    return _dense_kernel(library_path(), has_bias)


@lru_cache(maxsize=None)
def _dense_kernel(path, has_bias):
    if path is None or dnnl_library() is None:
        return None
    if has_bias:
        backward = kernel("DenseBackward", dense_backward_reference, out_shape=lambda x, w, b, _: (x, w, b),
                          out_dtype=lambda x, *_: (x, x, x))
        if backward is None:
            return None

        def bprop_with_bias(x, weight, bias, out, dout):
            return backward(x, weight, bias, dout)

        return kernel("Dense", dense_reference, out_shape=lambda x, w, b: (x[0], w[0]), bprop=bprop_with_bias)
    backward = kernel("DenseNoBiasBackward", matmul_backward_reference, out_shape=lambda x, w, _: (x, w),
                      out_dtype=lambda x, *_: (x, x))
    if backward is None:
        return None

    def bprop(x, weight, out, dout):
        return backward(x, weight, dout)

    return kernel("DenseNoBias", matmul_reference, out_shape=lambda x, w: (x[0], w[0]), bprop=bprop)
