"""RepBN, PRepBN and the one γ schedule a model shares (paper Sec. 4, Eq. 4–5).

RepBN(x) = BN(x) + η·x with a single learnable scalar η (``alpha``) over the channel axis of
``(B, N, C)`` tokens; statistics are taken over the batch and token axes.

PRepBN(x) = γ·LN(x) + (1 − γ)·RepBN(x) in training, with
γ(step) = clip((T − (step − warm)) / T, 0, 1), and pure RepBN in evaluation.
``step`` is the number of optimizer steps already taken. Every PRepBN of a model reads the same
three non-trainable Parameters (``prepbn_step``, ``prepbn_decay_steps``, ``prepbn_warmup_steps``,
owned by the model), so the schedule is one per model and can be advanced inside a compiled train
graph with ``ops.assign_add``. Unlike the reference, the BN branch also runs (and updates its
statistics) during LN-only warm-up; its output is weighted 0 there, and no released model warms up.
"""
from functools import partial

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

__all__ = [
    "TokenBatchNorm", "RepBN", "PRepBN", "get_norm_layer", "prepbn_layers", "share_prepbn_schedule",
    "set_prepbn_schedule", "get_prepbn_schedule", "prepbn_gamma",
]

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # MindSpore's momentum 0.9 is PyTorch's momentum 0.1


class TokenBatchNorm(nn.Cell):
    """BatchNorm1d over the channel axis of ``(B, N, C)`` tokens (statistics over B·N samples)."""

    def __init__(self, dim):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=BN_EPS, momentum=BN_MOMENTUM)

    def construct(self, x):
        return self.bn(x.transpose(0, 2, 1)).transpose(0, 2, 1)

    def affine(self):
        """Eval-mode per-channel map ``x -> a*x + b`` as float64 numpy arrays ``(a, b)``."""
        bn = self.bn
        sigma = np.sqrt(bn.moving_variance.asnumpy().astype(np.float64) + bn.eps)
        alpha = bn.gamma.asnumpy().astype(np.float64)
        a = alpha / sigma
        b = bn.beta.asnumpy().astype(np.float64) - a * bn.moving_mean.asnumpy().astype(np.float64)
        return a, b


class RepBN(TokenBatchNorm):
    """RepBN(x) = BN(x) + η·x, η a learnable scalar initialised to 1 (paper Eq. 4)."""

    def __init__(self, dim):
        super().__init__(dim)
        self.alpha = Parameter(Tensor(np.ones((1,), np.float32)), name="alpha")

    def construct(self, x):
        x = x.transpose(0, 2, 1)
        return (self.bn(x) + self.alpha * x).transpose(0, 2, 1)

    def affine(self):
        """Lemma 4.1: RepBN = BN with α + ησ, β + ημ; returned as ``(a, b)`` with a = α/σ + η."""
        a, b = super().affine()
        return a + float(self.alpha.asnumpy()[0]), b


def _schedule_param(value, name):
    return Parameter(Tensor(int(value), ms.int32), name=name, requires_grad=False)


class PRepBN(nn.Cell):
    """Progressive RepBN: γ·LayerNorm + (1 − γ)·RepBN while training, pure RepBN in evaluation.

    Args:
        dim: channels.
        decay_steps: T, optimizer steps over which γ decays linearly from 1 to 0 (> 0; use
            ``RepBN`` for "0 decay steps").
        warmup_steps: optimizer steps of LayerNorm only before the decay starts.
        ln_eps: LayerNorm epsilon (1e-6 DeiT/PVT, 1e-5 Swin/CSwin in the reference).
    """

    def __init__(self, dim, decay_steps=300000, warmup_steps=0, ln_eps=1e-6):
        super().__init__()
        if int(decay_steps) <= 0:
            raise ValueError(f"PRepBN needs decay_steps > 0, got {decay_steps}; "
                             "for '0 decay steps' use norm='repbn'.")
        self.norm1 = nn.LayerNorm((dim,), epsilon=ln_eps)
        self.norm2 = RepBN(dim)
        # Replaced by the model-wide Parameters in share_prepbn_schedule().
        self.step = _schedule_param(0, "step")
        self.decay_steps = _schedule_param(decay_steps, "decay_steps")
        self.warmup_steps = _schedule_param(warmup_steps, "warmup_steps")

    def gamma(self):
        step = self.step.astype(ms.float32)
        total = self.decay_steps.astype(ms.float32)
        warm = self.warmup_steps.astype(ms.float32)
        return ops.clip_by_value((total - (step - warm)) / total, 0.0, 1.0)

    def construct(self, x):
        if not self.training:
            return self.norm2(x)
        gamma = self.gamma().astype(x.dtype)
        return gamma * self.norm1(x) + (1.0 - gamma) * self.norm2(x)

    def affine(self):
        """Eval-mode per-channel map (pure RepBN)."""
        return self.norm2.affine()


def get_norm_layer(norm, ln_eps=1e-6, decay_steps=300000):
    """Norm-layer factory ``dim -> Cell`` for ``norm`` in {"ln", "bn", "repbn", "prepbn"}."""
    if norm == "ln":
        return lambda dim: nn.LayerNorm((dim,), epsilon=ln_eps)
    if norm == "bn":
        return TokenBatchNorm
    if norm == "repbn":
        return RepBN
    if norm == "prepbn":
        return partial(PRepBN, decay_steps=decay_steps, ln_eps=ln_eps)
    raise ValueError(f"Unknown norm '{norm}'; choose one of 'ln', 'bn', 'repbn', 'prepbn'.")


def prepbn_layers(net):
    """All PRepBN cells of ``net``."""
    return [cell for _, cell in net.cells_and_names() if isinstance(cell, PRepBN)]


def share_prepbn_schedule(net):
    """Give every PRepBN of ``net`` the same three schedule Parameters, owned by ``net``.

    Call once at the end of a model's ``__init__``. Models without PRepBN are left unchanged.
    """
    layers = prepbn_layers(net)
    if not layers:
        return
    first = layers[0]
    step = _schedule_param(0, "prepbn_step")
    decay = _schedule_param(int(first.decay_steps.asnumpy()), "prepbn_decay_steps")
    warm = _schedule_param(int(first.warmup_steps.asnumpy()), "prepbn_warmup_steps")
    for layer in layers:
        layer.step, layer.decay_steps, layer.warmup_steps = step, decay, warm
    # Assigned last so that the checkpoint names are the model-level ones.
    net.prepbn_step, net.prepbn_decay_steps, net.prepbn_warmup_steps = step, decay, warm


def _require_schedule(net):
    if not hasattr(net, "prepbn_step"):
        raise ValueError(f"{type(net).__name__} has no PRepBN layers, so it has no γ schedule.")


def set_prepbn_schedule(net, step=None, decay_steps=None, warmup_steps=None):
    """Set the model's schedule (values visible to already compiled graphs: uses ``ops.assign``)."""
    _require_schedule(net)
    if decay_steps is not None and int(decay_steps) <= 0:
        raise ValueError(f"prepbn decay_steps must be > 0, got {decay_steps}.")
    for value, param in ((step, net.prepbn_step), (decay_steps, net.prepbn_decay_steps),
                         (warmup_steps, net.prepbn_warmup_steps)):
        if value is not None:
            ops.assign(param, Tensor(int(value), ms.int32))


def get_prepbn_schedule(net):
    """``dict(step, decay_steps, warmup_steps)`` of the model's schedule, or None without PRepBN."""
    if not hasattr(net, "prepbn_step"):
        return None
    return {"step": int(net.prepbn_step.asnumpy()), "decay_steps": int(net.prepbn_decay_steps.asnumpy()),
            "warmup_steps": int(net.prepbn_warmup_steps.asnumpy())}


def prepbn_gamma(step, decay_steps, warmup_steps=0):
    """γ at optimizer step ``step`` (Python float; the formula the layers evaluate in-graph)."""
    return float(np.clip((decay_steps - (step - warmup_steps)) / decay_steps, 0.0, 1.0))
