"""training.evaluate.Evaluator: the one top-k evaluator of the train loop, validate.py and the ablation."""
import numpy as np
from mindspore import nn

from slab_ms.training.evaluate import Evaluator


class Logits(nn.Cell):
    """The 'images' are the logits: the evaluator's counting is then checked by hand."""

    def construct(self, x):
        return x * 1.0


def test_top1_topk_loss_and_the_padded_last_batch():
    logits = np.array([[3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0],    # label 0: top-1
                       [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],    # label 2: rank 5, in the top 5
                       [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],    # label 1: rank 6, out of the top 5
                       [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], np.float32)  # label 6: a tie, ranked by index: out
    labels = np.array([0, 2, 1, 6], np.int32)
    batches = [(logits[:3], labels[:3]), (logits[3:], labels[3:])]  # the last batch is padded to 3
    accuracy = Evaluator(Logits(), num_classes=7, batch_size=3)(batches)
    shifted = logits - logits.max(1, keepdims=True)
    loss = -(shifted - np.log(np.exp(shifted).sum(1, keepdims=True)))[np.arange(4), labels].mean()
    assert accuracy.count == 4 and accuracy.top1 == 0.25 and accuracy.topk == 0.5
    assert abs(accuracy.loss - loss) < 1e-6


def test_k_is_the_class_count_below_five():
    evaluator = Evaluator(Logits(), num_classes=3, batch_size=2)
    accuracy = evaluator([(np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]], np.float32), np.array([0, 1]))])
    assert evaluator.k == 3 and accuracy.top1 == 0.0 and accuracy.topk == 1.0
