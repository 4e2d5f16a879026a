"""The paper's final phase: weights frozen, RepBN statistics re-estimated.

After training, drop-path and the LN branch of PRepBN are off at inference, which shifts the
activations the BatchNorms see. The reference therefore runs extra passes over the (augmented,
un-mixed) training data with the model in evaluation mode except its BatchNorm cells: they normalise
with batch statistics and update their running statistics; no gradients, no optimizer step.
"""
from mindspore import nn, ops
from mindspore.communication import get_group_size

__all__ = ["BNRecalibration", "average_bn_statistics"]

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


def _batch_norms(net):
    return [cell for _, cell in net.cells_and_names() if isinstance(cell, _BN_TYPES)]


class BNRecalibration(nn.Cell):
    """Forward pass that only updates BatchNorm running statistics.

    Calling :meth:`prepare` puts ``net`` in evaluation mode (drop-path off, PRepBN = pure RepBN,
    schedule counters untouched) and every BatchNorm back in training mode. This is its own top cell,
    so its graph is compiled with exactly those flags.
    """

    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def prepare(self):
        self.set_train(False)
        batch_norms = _batch_norms(self.net)
        if not batch_norms:
            raise ValueError(f"{type(self.net).__name__} has no BatchNorm to re-calibrate; set bn_recalib_epochs 0")
        for bn in batch_norms:
            bn.set_train(True)
        return self

    def construct(self, images):
        return ops.stop_gradient(self.net(images))


def average_bn_statistics(net):
    """Mean of every BatchNorm's running statistics over the data-parallel ranks (keeps ranks identical;
    the reference instead keeps per-rank statistics and saves rank 0's)."""
    all_reduce = ops.AllReduce()
    size = get_group_size()
    for bn in _batch_norms(net):
        for param in (bn.moving_mean, bn.moving_variance):
            ops.assign(param, all_reduce(param.value()) / size)
