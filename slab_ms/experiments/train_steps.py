"""The demos' training (the LM and detection demos): their lr schedule and their loop of compiled train steps,
with train.py's γ check (``GammaDecay``) and progress lines (``ProgressLogger``)."""
import math
import time

import numpy as np
from mindspore import Tensor

from ..layers import PRepBNSchedule
from ..training import GammaDecay, NonFiniteLossError, ProgressLogger

__all__ = ["warmup_cosine_lr", "train_steps"]


def warmup_cosine_lr(steps, peak):
    """Linear warm-up over 5 % of the steps, then cosine to 10 % of the peak (one float32 value per step)."""
    warm = max(1, steps // 20)
    return np.array([peak * (i + 1) / warm if i < warm else
                     peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm - 1))))
                     for i in range(steps)], np.float32)


def train_steps(step, model, batches, lrs, log_interval, units_per_step, print_fn, steps_per_epoch=None, unit="img"):
    """Run the compiled train ``step`` (a ``TrainStep`` whose optimizer follows ``lrs``, one value per step) on each
    ``(inputs, targets)`` of ``batches`` (numpy, ``len(lrs)`` of them). The γ schedule of ``model`` (the model
    that owns the PRepBN schedule), if any, is checked every step; a progress line every ``log_interval`` steps
    (the mean loss since the last one); a non-finite loss stops training. Returns ``(seconds, losses)``; the
    trained network is left in evaluation mode."""
    total = len(lrs)
    gamma = None
    if PRepBNSchedule.of(model) is not None:
        gamma = GammaDecay(model, optimizer=step.optimizer, total_steps=total, in_graph=True, print_fn=print_fn)
        gamma.on_train_begin()
    progress = ProgressLogger(total, steps_per_epoch, units_per_step, log_interval, lrs, print_fn=print_fn, unit=unit)
    step.set_train(True)
    losses = []
    start = time.perf_counter()
    for done, (inputs, targets) in enumerate(batches, 1):
        loss, grad_norm = step(Tensor(inputs), Tensor(targets))
        losses.append(float(loss.asnumpy()))
        if not math.isfinite(losses[-1]):
            raise NonFiniteLossError(f"the loss is {losses[-1]} at step {done}")
        g = gamma.on_train_step_end() if gamma is not None else None
        progress.step_end(done, float(np.mean(losses[-log_interval:])), float(grad_norm.asnumpy()), g)
    seconds = time.perf_counter() - start
    if gamma is not None:
        gamma.on_train_end()
    step.set_train(False)
    return seconds, losses
