"""Small shared helpers: tuple conversion, the float32 softmax and the lookup of the per-cell-type registries
(folds, FLOP formulas)."""
import collections.abc

import mindspore as ms
from mindspore import ops

__all__ = ["to_2tuple", "float32_softmax", "registered_for"]


def to_2tuple(x):
    if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
        x = tuple(x)
        if len(x) != 2:
            raise ValueError(f"expected a pair, got {x}")
        return x
    return (x, x)


def registered_for(registry, cell):
    """The entry of ``registry`` (cell type -> value) for ``cell``: its own type's, else its nearest registered
    base class's (the one rule of every per-cell-type registry), or None."""
    return next((registry[t] for t in type(cell).__mro__ if t in registry), None)


def float32_softmax(scores, dtype):
    """Softmax over the last axis computed in float32 whatever the AMP level (float16's exp overflows above
    11), returned as ``dtype`` for the product with the values."""
    return ops.softmax(scores.astype(ms.float32), axis=-1).astype(dtype)
