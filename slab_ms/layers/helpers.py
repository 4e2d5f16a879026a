"""Small shared helpers: tuple conversion and the reference's Dense initialisation."""
import collections.abc

from mindspore import nn
from mindspore.common.initializer import TruncatedNormal

__all__ = ["to_2tuple", "dense"]


def to_2tuple(x):
    if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
        x = tuple(x)
        if len(x) != 2:
            raise ValueError(f"expected a pair, got {x}")
        return x
    return (x, x)


def dense(in_channels, out_channels, has_bias=True):
    """Dense with trunc-normal(0.02) weight and zero bias, as every Linear of the reference."""
    return nn.Dense(in_channels, out_channels, weight_init=TruncatedNormal(0.02), bias_init="zeros",
                    has_bias=has_bias)
