"""Top-1 / top-k accuracy and the mean cross-entropy of a classifier, from its logits on the host: the one
evaluator of the train loop, ``validate.py`` and the ablation."""
import collections

import numpy as np
import mindspore as ms

__all__ = ["Evaluator", "Accuracy"]

Accuracy = collections.namedtuple("Accuracy", ["top1", "topk", "loss", "count"])
Accuracy.__doc__ = "Top-1 and top-k accuracy, mean cross-entropy and the number of images evaluated."


class Evaluator:
    """``net`` in evaluation mode over batches of numpy ``(images, labels)``; top-k with k = min(5, classes).

    A batch smaller than ``batch_size`` (the last one) is zero-padded, so one input shape is compiled; the
    padding's outputs are dropped. ``totals`` gives the sums (top-1 correct, top-k correct, cross-entropy,
    images), which data-parallel ranks can add up before ``Evaluator.accuracy``.
    """

    def __init__(self, net, num_classes, batch_size):
        self.net, self.k, self.batch_size = net, min(5, int(num_classes)), batch_size

    def totals(self, batches):
        self.net.set_train(False)
        totals = np.zeros(4, np.float64)
        for images, labels in batches:
            real = len(labels)
            if real < self.batch_size:
                images = np.concatenate([images, np.zeros((self.batch_size - real,) + images.shape[1:],
                                                          images.dtype)])
            logits = self.net(ms.Tensor(images)).asnumpy()[:real].astype(np.float64)
            labels = np.asarray(labels).astype(np.int64)
            ranked = np.argsort(-logits, axis=1, kind="stable")[:, :self.k]
            shifted = logits - logits.max(1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
            totals += [(ranked[:, 0] == labels).sum(), (ranked == labels[:, None]).any(axis=1).sum(),
                       -log_probs[np.arange(real), labels].sum(), real]
        return totals

    @staticmethod
    def accuracy(totals):
        count = max(totals[3], 1.0)
        return Accuracy(totals[0] / count, totals[1] / count, totals[2] / count, int(totals[3]))

    def __call__(self, batches):
        return self.accuracy(self.totals(batches))
