"""Transformer MLP: fc1 -> exact GELU -> dropout -> fc2 -> dropout."""
from mindspore import nn

from .helpers import dense

__all__ = ["Mlp"]


class Mlp(nn.Cell):
    def __init__(self, in_features, hidden_features=None, out_features=None, drop=0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = dense(in_features, hidden_features)
        self.act = nn.GELU(approximate=False)
        self.fc2 = dense(hidden_features, out_features)
        self.drop = nn.Dropout(p=drop) if drop > 0 else nn.Identity()

    def construct(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
