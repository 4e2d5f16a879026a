"""RepBN, PRepBN and the one γ schedule a model shares (paper Sec. 4, Eq. 4–5).

RepBN(x) = BN(x) + η·x with a single learnable scalar η (``alpha``) over the channel axis of
``(B, N, C)`` tokens; statistics are taken over the batch and token axes.

PRepBN(x) = γ·LN(x) + (1 − γ)·RepBN(x) in training, with
γ from the model's one :class:`~slab_ms.layers.prepbn_schedule.PRepBNSchedule` (counted in optimizer steps),
and pure RepBN in evaluation. Unlike the reference, the BN branch also runs (and updates its
statistics) during LN-only warm-up; its output is weighted 0 there, and no released model warms up.

For token sequences with padding (language models), :class:`MaskedRepBN` / :class:`MaskedPRepBN` take
``(x, mask)``: in training the BatchNorm statistics are a masked mean and variance over the real tokens
(mask 1) only, with static shapes, and padded positions pass through the BN unchanged (as in the
reference LLaMA code: they receive ``x + η·x``); evaluation uses the running statistics for every token.
Their LayerNorm side is an :class:`RMSNorm` (LLaMA's norm), and one epsilon serves both sides.
"""
from functools import lru_cache, partial

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from .cpu_kernels import kernel, library_path
from .prepbn_schedule import PRepBNSchedule, gamma

__all__ = ["LayerNorm", "TokenBatchNorm", "RepBN", "PRepBN", "RMSNorm", "MaskedRepBN", "MaskedPRepBN", "get_norm_layer",
           "get_masked_norm_layer", "prepbn_layers", "attach_prepbn_schedule"]

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # MindSpore's momentum 0.9 is PyTorch's momentum 0.1


def layer_norm_backward(x, weight, stats, dy):
    """(dx, dγ, dβ) of LayerNorm over the last axis from its input, weight, per-row (mean, 1/σ) ``stats`` and the
    output's gradient, in standard ops (the native backward's formula and gradient)."""
    mean, rstd = ops.unstack(stats, axis=-1)
    xhat = (x - mean.expand_dims(-1)) * rstd.expand_dims(-1)
    g = dy * weight
    dx = rstd.expand_dims(-1) * (g - g.mean(-1, keep_dims=True) - xhat * (g * xhat).mean(-1, keep_dims=True))
    width = x.shape[-1]
    return dx, (dy * xhat).reshape(-1, width).sum(0), dy.reshape(-1, width).sum(0)


def _native_layer_norm():
    """The native LayerNorm ``(x, γ, β, ε) -> (y, stats)`` (stats: per-row mean and 1/σ) with its native backward, or
    None where native kernels are not used; one per library, shared by every cell (the kernels are stateless)."""
    return _layer_norm_kernel(library_path())


@lru_cache(maxsize=None)
def _layer_norm_kernel(path):
    if path is None:
        return None
    backward = kernel("LayerNormBackward", layer_norm_backward, out_shape=lambda x, w, *_: (x, w, w),
                      out_dtype=lambda x, *_: (x, x, x))
    if backward is None:
        return None

    def bprop(x, weight, bias, eps, out, dout):
        dx, dweight, dbias = backward(x, weight, out[1], dout[0])
        return dx, dweight, dbias, ops.zeros_like(eps)

    return kernel("LayerNorm", None, out_shape=lambda x, *_: (x, x[:-1] + [2]), out_dtype=lambda x, *_: (x, x),
                  bprop=bprop)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis (same parameters, same numbers to float rounding); on float32 CPU tensors,
    in training and evaluation, one native pass forward and one backward (``cpu_kernels``): MindSpore's CPU
    LayerNorm and its gradient are several times slower. ``use_standard_ops`` switches back."""

    def __init__(self, dim, epsilon=1e-6):
        super().__init__((dim,), epsilon=epsilon)
        self.native_kernel = _native_layer_norm()
        self.eps_tensor = Tensor([epsilon], ms.float32)

    def construct(self, x):
        if self.native_kernel is not None and x.dtype == ms.float32:
            return self.native_kernel(x, self.gamma, self.beta, self.eps_tensor)[0]
        y, _, _ = self.layer_norm(x, self.gamma.astype(x.dtype), self.beta.astype(x.dtype))
        return y


def rep_batch_norm_backward(x, weight, alpha, stats, dy):
    """(dx, dγ, dβ, dα) of y = BN(x) + α·x with batch statistics over every axis but the last, from the per-channel
    (mean, 1/σ, unbiased variance) ``stats`` and the output's gradient, in standard ops (the native backward's
    formula and gradient)."""
    mean, rstd, _ = ops.unstack(stats, axis=0)
    width = x.shape[-1]
    rows_x, rows_dy = x.reshape(-1, width), dy.reshape(-1, width)
    xhat = (rows_x - mean) * rstd
    dbeta, dweight = rows_dy.sum(0), (rows_dy * xhat).sum(0)
    count = rows_x.shape[0]
    dx = alpha * rows_dy + weight * rstd * (rows_dy - dbeta / count - xhat * dweight / count)
    return dx.reshape(x.shape), dweight, dbeta, (rows_dy * rows_x).sum().reshape((1,))


def _native_rep_batch_norm():
    """The native training RepBN ``(x, γ, β, α, ε) -> (BN(x) + α·x, stats)`` over the last axis (stats: per-channel
    mean, 1/σ and unbiased variance) with its native backward, or None where native kernels are not used; one per
    library, shared by every cell."""
    return _rep_batch_norm_kernel(library_path())


@lru_cache(maxsize=None)
def _rep_batch_norm_kernel(path):
    if path is None:
        return None
    backward_grad = ops.GradOperation(get_all=True, sens_param=True)(rep_batch_norm_backward)

    def second_order(x, weight, alpha, stats, dy, out, dout):
        return backward_grad(x, weight, alpha, stats, dy, dout)

    backward = kernel("RepBatchNormBackward", rep_batch_norm_backward, out_shape=lambda x, w, a, *_: (x, w, w, a),
                      out_dtype=lambda x, *_: (x, x, x, x), bprop=second_order)
    if backward is None:
        return None

    def bprop(x, weight, bias, alpha, eps, out, dout):
        dx, dweight, dbias, dalpha = backward(x, weight, alpha, out[1], dout[0])
        return dx, dweight, dbias, dalpha, ops.zeros_like(eps)

    return kernel("RepBatchNorm", None, out_shape=lambda x, w, *_: (x, [3] + w), out_dtype=lambda x, *_: (x, x),
                  bprop=bprop)


class TokenBatchNorm(nn.Cell):
    """BatchNorm1d over the channel axis of ``(B, N, C)`` tokens (statistics over B·N samples).

    In training on float32 CPU tensors one native pass over the tokens as they lie (no transposes) and one backward
    (``cpu_kernels``), with ``nn.BatchNorm1d``'s running statistics: momentum 0.9 (PyTorch's 0.1), unbiased
    running variance.
    """

    def __init__(self, dim, eps=BN_EPS):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, momentum=BN_MOMENTUM)
        self.native_kernel = _native_rep_batch_norm()
        self.eps_tensor = Tensor([eps], ms.float32)
        self.zero = Tensor([0.0], ms.float32)

    def construct(self, x):
        if self.training and self._native(x):
            return self.native_batch_norm(x, self.zero)
        return self.bn(x.transpose(0, 2, 1)).transpose(0, 2, 1)

    def _native(self, x):
        """Whether this training call takes the native kernel: batch statistics (``norm_eval`` sets the BN's
        ``use_batch_statistics`` False), float32, and a BatchNorm1d of its own (MindCV's O2 wraps it in a cell
        without its parameters: isinstance first)."""
        return (isinstance(self.bn, nn.BatchNorm1d) and self.bn.use_batch_statistics is None
                and self.native_kernel is not None and x.dtype == ms.float32)

    def native_batch_norm(self, x, alpha):
        """BN(x) + α·x with batch statistics, through the native kernel; moves the running statistics."""
        bn = self.bn
        y, stats = self.native_kernel(x, bn.gamma, bn.beta, alpha, self.eps_tensor)
        mean, _, variance = ops.unstack(ops.stop_gradient(stats), axis=0)
        y = ops.depend(y, ops.assign(bn.moving_mean, bn.moving_mean * BN_MOMENTUM + mean * (1.0 - BN_MOMENTUM)))
        return ops.depend(y, ops.assign(bn.moving_variance,
                                        bn.moving_variance * BN_MOMENTUM + variance * (1.0 - BN_MOMENTUM)))

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

    def __init__(self, dim, eps=BN_EPS):
        super().__init__(dim, eps=eps)
        self.alpha = Parameter(Tensor(np.ones((1,), np.float32)), name="alpha")

    def construct(self, x):
        if self.training and self._native(x):
            return self.native_batch_norm(x, self.alpha)
        x = x.transpose(0, 2, 1)
        return (self.bn(x) + self.alpha * x).transpose(0, 2, 1)

    def affine(self):
        """Lemma 4.1: RepBN = BN with α + ησ, β + ημ; returned as ``(a, b)`` with a = α/σ + η."""
        a, b = super().affine()
        return a + float(self.alpha.asnumpy()[0]), b


def progressive_mix(ln, bn, step, decay_steps, warmup_steps):
    """γ·ln + (1 − γ)·bn with γ and the sum in float32 under any AMP level, returned in ``ln``'s dtype (a module
    function: a float16 cell casts the arguments of its own methods back to float16)."""
    g = gamma(step.astype(ms.float32), decay_steps.astype(ms.float32), warmup_steps.astype(ms.float32))
    return (g * ln.astype(ms.float32) + (1.0 - g) * bn.astype(ms.float32)).astype(ln.dtype)


class PRepBN(nn.Cell):
    """Progressive RepBN: γ·LayerNorm + (1 − γ)·RepBN while training, pure RepBN in evaluation.

    Args:
        dim: channels.
        schedule: the model's :class:`PRepBNSchedule` (γ is read from its Parameters).
        ln_eps: LayerNorm epsilon (1e-6 DeiT/PVT, 1e-5 Swin/CSwin in the reference).
        norm1, norm2: the two sides as cells, when not LayerNorm(dim, ln_eps) and RepBN(dim).
    """

    def __init__(self, dim, schedule, ln_eps=1e-6, norm1=None, norm2=None):
        super().__init__()
        self.norm1 = norm1 if norm1 is not None else LayerNorm(dim, epsilon=ln_eps)
        self.norm2 = norm2 if norm2 is not None else RepBN(dim)
        self.schedule = schedule
        self._step, self._decay_steps, self._warmup_steps = schedule.parameters

    def construct(self, x):
        if not self.training:
            return self.norm2(x)
        return progressive_mix(self.norm1(x), self.norm2(x), self._step, self._decay_steps, self._warmup_steps)

    def affine(self):
        """Eval-mode per-channel map (pure RepBN)."""
        return self.norm2.affine()


class RMSNorm(nn.Cell):
    """LLaMA's RMSNorm over the channel axis: ``weight · x / sqrt(mean(x²) + eps)``, statistics per token
    (computed in float32). ``mask`` is accepted and ignored, so every token norm is called the same way."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = Parameter(Tensor(np.ones((dim,), np.float32)), name="weight")
        self.eps = float(eps)

    def construct(self, x, mask=None):
        xf = x.astype(ms.float32)
        variance = ops.mean(xf * xf, -1, True)
        return self.weight * (xf * ops.rsqrt(variance + self.eps)).astype(x.dtype)


class MaskedRepBN(RepBN):
    """RepBN over ``(B, T, C)`` token sequences whose padded positions are left out of the batch statistics.

    ``construct(x, mask)``, ``mask`` (B, T) with 1 for a real token and 0 for padding. In training the mean
    and the (biased) variance that normalise are taken over the real tokens only, the running mean and the
    unbiased running variance move by the same momentum as ``nn.BatchNorm1d`` (MindSpore 0.9 = PyTorch 0.1),
    and a padded position leaves the BN as it came in (output ``x + η·x``, as in the reference). Without a mask,
    or in evaluation, it is plain RepBN (running statistics for every token in evaluation).

    Args:
        dim: channels.
        eps: BatchNorm epsilon (the reference LLaMA passes its ``rms_norm_eps``, 1e-6).
        zero_init: start η, the BN weight and the BN bias at 0 as the reference LLaMA does (RepBN outputs 0
            until trained); False keeps the vision initialisation (η = 1, weight 1, bias 0).
    """

    def __init__(self, dim, eps=1e-6, zero_init=True):
        super().__init__(dim, eps=eps)
        if zero_init:
            for param in (self.alpha, self.bn.gamma, self.bn.beta):
                param.set_data(Tensor(np.zeros(param.shape, np.float32)))
        self.eps = float(eps)
        self.keep = float(BN_MOMENTUM)

    def construct(self, x, mask=None):
        if mask is None and self.training and self._native(x):
            return self.native_batch_norm(x, self.alpha)
        xt = x.transpose(0, 2, 1)
        if mask is None or not self.training:
            return (self.bn(xt) + self.alpha * xt).transpose(0, 2, 1)
        m = mask.astype(x.dtype).expand_dims(-1)  # (B, T, 1)
        count = m.sum()
        mean = (x * m).sum(axis=(0, 1)) / count
        centered = x - mean
        var = (centered * centered * m).sum(axis=(0, 1)) / count
        y = centered * ops.rsqrt(var + self.eps) * self.bn.gamma + self.bn.beta
        y = m * y + (1.0 - m) * x
        unbiased = var * count / ops.maximum(count - 1.0, 1.0)
        batch_mean, batch_var = ops.stop_gradient(mean), ops.stop_gradient(unbiased)
        new_mean = self.bn.moving_mean * self.keep + batch_mean * (1.0 - self.keep)
        new_var = self.bn.moving_variance * self.keep + batch_var * (1.0 - self.keep)
        y = ops.depend(y, ops.assign(self.bn.moving_mean, new_mean))
        y = ops.depend(y, ops.assign(self.bn.moving_variance, new_var))
        return y + self.alpha * x


class MaskedPRepBN(PRepBN):
    """PRepBN for token sequences: γ·RMSNorm(x) + (1 − γ)·MaskedRepBN(x, mask) in training, pure RepBN in
    evaluation; both sides take ``eps`` (the reference LLaMA's ``LinearNorm(..., eps=rms_norm_eps)``)."""

    def __init__(self, dim, schedule, eps=1e-6, zero_init=True):
        super().__init__(dim, schedule, norm1=RMSNorm(dim, eps), norm2=MaskedRepBN(dim, eps, zero_init))

    def construct(self, x, mask=None):
        if not self.training:
            return self.norm2(x)
        return progressive_mix(self.norm1(x), self.norm2(x, mask), self._step, self._decay_steps, self._warmup_steps)


def get_masked_norm_layer(norm, eps=1e-6, decay_steps=None, warmup_steps=0, zero_init=True):
    """Token-sequence norm factory ``dim -> Cell`` (each cell is called ``norm(x, mask=None)``) for ``norm`` in
    {"rmsnorm", "repbn", "prepbn"}; for "prepbn" every layer it builds shares one new :class:`PRepBNSchedule`
    of T = ``decay_steps`` after ``warmup_steps`` RMSNorm-only steps."""
    if norm == "rmsnorm":
        return partial(RMSNorm, eps=eps)
    if norm == "repbn":
        return partial(MaskedRepBN, eps=eps, zero_init=zero_init)
    if norm == "prepbn":
        if decay_steps is None:
            raise ValueError("norm='prepbn' needs prepbn_decay_steps (T, the optimizer steps over which γ decays).")
        return partial(MaskedPRepBN, schedule=PRepBNSchedule(decay_steps, warmup_steps), eps=eps, zero_init=zero_init)
    raise ValueError(f"Unknown norm '{norm}'; choose one of 'rmsnorm', 'repbn', 'prepbn'.")


def get_norm_layer(norm, ln_eps=1e-6, decay_steps=None):
    """Norm-layer factory ``dim -> Cell`` for ``norm`` in {"ln", "bn", "repbn", "prepbn", "pbn"}.

    "pbn" is the paper's "BN + progressive strategy" ablation (Table 7): γ·LayerNorm + (1 − γ)·BN, a
    PRepBN whose BN side has no η·x term. For "prepbn" and "pbn" every layer the factory builds shares one
    new :class:`PRepBNSchedule` of T = ``decay_steps``; the model hands it to itself with
    :func:`attach_prepbn_schedule` once its layers are built.
    """
    if norm == "ln":
        return partial(LayerNorm, epsilon=ln_eps)
    if norm == "bn":
        return TokenBatchNorm
    if norm == "repbn":
        return RepBN
    if norm in ("prepbn", "pbn"):
        if decay_steps is None:
            raise ValueError(f"norm='{norm}' needs prepbn_decay_steps (T, the optimizer steps over which γ decays).")
        schedule = PRepBNSchedule(decay_steps)
        if norm == "pbn":
            return lambda dim: PRepBN(dim, schedule, ln_eps=ln_eps, norm2=TokenBatchNorm(dim))
        return partial(PRepBN, schedule=schedule, ln_eps=ln_eps)
    raise ValueError(f"Unknown norm '{norm}'; choose one of 'ln', 'bn', 'repbn', 'prepbn', 'pbn'.")


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
