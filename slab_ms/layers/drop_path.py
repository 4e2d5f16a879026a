"""Stochastic depth: drop whole residual branches per sample, rescaled by 1/keep."""
from mindspore import nn, ops

__all__ = ["DropPath"]


class DropPath(nn.Cell):
    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob
        self.dropout = nn.Dropout(p=drop_prob)

    def construct(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        mask = ops.ones((x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
        return x * self.dropout(mask)
