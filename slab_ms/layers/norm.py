"""RepBN, PRepBN and the one γ schedule a model shares (paper Sec. 4, Eq. 4–5).

RepBN(x) = BN(x) + η·x with a single learnable scalar η (``alpha``) over the channel axis of
``(B, N, C)`` tokens; statistics are taken over the batch and token axes.

PRepBN(x) = γ·LN(x) + (1 − γ)·RepBN(x) in training, with
γ from the model's one :class:`~slab_ms.layers.schedule.PRepBNSchedule` (counted in optimizer steps),
and pure RepBN in evaluation. Unlike the reference, the BN branch also runs (and updates its
statistics) during LN-only warm-up; its output is weighted 0 there, and no released model warms up.
"""
from functools import partial

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn

from .schedule import PRepBNSchedule, gamma

__all__ = ["TokenBatchNorm", "RepBN", "PRepBN", "get_norm_layer", "prepbn_layers", "attach_prepbn_schedule"]

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


class PRepBN(nn.Cell):
    """Progressive RepBN: γ·LayerNorm + (1 − γ)·RepBN while training, pure RepBN in evaluation.

    Args:
        dim: channels.
        schedule: the model's :class:`PRepBNSchedule` (γ is read from its Parameters).
        ln_eps: LayerNorm epsilon (1e-6 DeiT/PVT, 1e-5 Swin/CSwin in the reference).
    """

    def __init__(self, dim, schedule, ln_eps=1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm((dim,), epsilon=ln_eps)
        self.norm2 = RepBN(dim)
        self.schedule = schedule
        self._step, self._decay_steps, self._warmup_steps = schedule.parameters

    def construct(self, x):
        if not self.training:
            return self.norm2(x)
        g = gamma(self._step.astype(ms.float32), self._decay_steps.astype(ms.float32),
                  self._warmup_steps.astype(ms.float32)).astype(x.dtype)
        return g * self.norm1(x) + (1.0 - g) * self.norm2(x)

    def affine(self):
        """Eval-mode per-channel map (pure RepBN)."""
        return self.norm2.affine()


def get_norm_layer(norm, ln_eps=1e-6, decay_steps=None):
    """Norm-layer factory ``dim -> Cell`` for ``norm`` in {"ln", "bn", "repbn", "prepbn"}.

    For "prepbn" every layer the factory builds shares one new :class:`PRepBNSchedule` of T = ``decay_steps``;
    the model hands it to itself with :func:`attach_prepbn_schedule` once its layers are built.
    """
    if norm == "ln":
        return lambda dim: nn.LayerNorm((dim,), epsilon=ln_eps)
    if norm == "bn":
        return TokenBatchNorm
    if norm == "repbn":
        return RepBN
    if norm == "prepbn":
        if decay_steps is None:
            raise ValueError("norm='prepbn' needs prepbn_decay_steps (T, the optimizer steps over which γ decays).")
        return partial(PRepBN, schedule=PRepBNSchedule(decay_steps), ln_eps=ln_eps)
    raise ValueError(f"Unknown norm '{norm}'; choose one of 'ln', 'bn', 'repbn', 'prepbn'.")


def prepbn_layers(net):
    """All PRepBN cells of ``net``."""
    return [cell for _, cell in net.cells_and_names() if isinstance(cell, PRepBN)]


def attach_prepbn_schedule(net):
    """Make ``net`` the owner of the one schedule its PRepBN layers share (call at the end of ``__init__``).

    Models without PRepBN are left unchanged; layers reading different schedules are an error.
    """
    schedules = {id(layer.schedule): layer.schedule for layer in prepbn_layers(net)}
    if len(schedules) > 1:
        raise ValueError(f"{type(net).__name__}: its PRepBN layers read {len(schedules)} different γ schedules; "
                         "build them from one get_norm_layer('prepbn', ...) factory.")
    for schedule in schedules.values():
        schedule.attach(net)
