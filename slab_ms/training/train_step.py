"""The compiled training step: loss scale, gradient accumulation, clipping, optimizer, EMA and the γ step.

Everything that must advance exactly once per optimizer step lives in the graph: the optimizer's
``global_step`` (lr index), the step of the model's γ schedule and the EMA update all happen in the same
branch as the optimizer call. Micro-batches of a gradient-accumulation cycle only add their gradients,
so γ and the lr are exact under accumulation, under dataset sinking (no host callback involved) and
after a resume (the counters are Parameters saved in the checkpoint).

Loss scaling follows MindSpore's ``FixedLossScaleUpdateCell`` / ``DynamicLossScaleUpdateCell``: with overflow
skipping on (``drop_overflow_update``, always on for a dynamic scale) an optimizer step whose gradients hold an
inf or NaN is skipped, so the optimizer, the lr index, γ and the EMA do not advance, and the BatchNorm running
statistics are put back to what they were before the step's forward passes; a dynamic scale is then
divided by ``scale_factor`` (not below 1) and multiplied by it after ``scale_window`` steps without overflow.
"""
import logging

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore.context import ParallelMode
from mindspore.parallel._utils import _get_device_num, _get_gradients_mean, _get_parallel_mode

from mindcv.optim import create_optimizer

from ..layers import PRepBNSchedule

__all__ = ["NetWithLoss", "TrainStep", "param_groups", "build_optimizer"]

_accumulate = ops.MultitypeFuncGraph("accumulate")
_clear = ops.MultitypeFuncGraph("clear")
_scale = ops.MultitypeFuncGraph("scale")
_unscale = ops.MultitypeFuncGraph("unscale")
_square_sum = ops.MultitypeFuncGraph("square_sum")
_ema_blend = ops.MultitypeFuncGraph("ema_blend")
_finite = ops.MultitypeFuncGraph("finite")


@_accumulate.register("Tensor", "Tensor", "Tensor")
def _accumulate_grad(factor, total, grad):
    return ops.assign_add(total, grad * factor.astype(grad.dtype))


@_clear.register("Tensor")
def _clear_grad(total):
    return ops.assign(total, ops.zeros_like(total))


@_scale.register("Tensor", "Tensor")
def _scale_grad(factor, grad):
    return grad * factor.astype(grad.dtype)


@_unscale.register("Tensor", "Tensor")
def _unscale_grad(scale, grad):
    return grad / scale.astype(grad.dtype)  # a division keeps inf (overflow) inf; x·(1/scale) may flush to 0


@_square_sum.register("Tensor")
def _grad_square_sum(grad):
    return ops.reduce_sum(ops.square(grad.astype(ms.float32)))


@_finite.register("Tensor")
def _grad_finite(grad):
    return ops.isfinite(grad).all()


@_ema_blend.register("Tensor", "Tensor", "Tensor")
def _ema_update(decay, ema, weight):
    return ops.assign(ema, ema * decay + weight.astype(ema.dtype) * (1.0 - decay))


class NetWithLoss(nn.Cell):
    """``loss(net(images).float32, labels)``: the loss runs in float32 whatever the AMP level."""

    def __init__(self, net, loss_fn):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss_fn = loss_fn

    def construct(self, images, labels):
        return self.loss_fn(self.net(images).astype(ms.float32), labels)


class TrainStep(nn.Cell):
    """One micro-batch of training; returns ``(loss, grad_norm)``.

    ``grad_norm`` is the global L2 norm of the (averaged, all-reduced, unscaled) gradient before
    clipping on an optimizer step, and 0 on a micro-batch that only accumulates.

    Args:
        net_with_loss: cell ``(images, labels) -> loss``.
        optimizer: a MindSpore optimizer over the model's trainable parameters.
        model: the bare model; if it owns a γ schedule (a PRepBN model), its step is advanced once per
            optimizer step; its parameters are also the EMA source.
        loss_scale: the loss scale, fixed or the initial dynamic one (gradients are unscaled before
            accumulation and clipping).
        loss_scale_type: "fixed" or "dynamic" (MindSpore's DynamicLossScaleUpdateCell; it always skips
            overflow steps).
        drop_overflow_update: skip an optimizer step whose gradients are not finite (counted in
            ``skipped_steps``) instead of applying it; the BN running statistics its forward passes moved are
            restored.
        scale_factor, scale_window: a dynamic scale is divided by ``scale_factor`` on overflow (not below
            1) and multiplied by it after ``scale_window`` optimizer steps without overflow.
        clip_grad: max global gradient norm, or None (PyTorch ``clip_grad_norm_`` formula).
        accumulate_steps: micro-batches per optimizer step (gradients are averaged).
        ema_decay: keep an ``ema.*`` copy of every model parameter, ``ema = d·ema + (1-d)·w`` after
            each optimizer step (timm ModelEma v1 as in the reference; integer schedule counters are
            copied); None: no EMA.
    """

    def __init__(self, net_with_loss, optimizer, model, loss_scale=1.0, clip_grad=None, accumulate_steps=1,
                 ema_decay=None, loss_scale_type="fixed", drop_overflow_update=False, scale_factor=2.0,
                 scale_window=2000):
        super().__init__(auto_prefix=False)
        self.network = net_with_loss
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        if loss_scale_type not in ("fixed", "dynamic"):
            raise ValueError(f"loss_scale_type must be 'fixed' or 'dynamic', got {loss_scale_type!r}")
        self.dynamic_scale = loss_scale_type == "dynamic"
        self.skip_overflow = bool(drop_overflow_update) or self.dynamic_scale
        if self.dynamic_scale:
            self.loss_scale = Parameter(Tensor(loss_scale, ms.float32), name="train_step.loss_scale",
                                        requires_grad=False)
            self.good_steps = Parameter(Tensor(0, ms.int32), name="train_step.loss_scale_good_steps",
                                        requires_grad=False)
            self.scale_factor = Tensor(scale_factor, ms.float32)
            self.scale_window = Tensor(int(scale_window), ms.int32)
            self.min_scale = Tensor(1.0, ms.float32)
        else:
            self.loss_scale = Tensor(loss_scale, ms.float32)
        if self.skip_overflow:
            self.skipped_steps = Parameter(Tensor(0, ms.int32), name="train_step.skipped_steps", requires_grad=False)
        stats = [p for p in model.get_parameters() if p.name.endswith(("moving_mean", "moving_variance"))]
        self.restore_stats = self.skip_overflow and bool(stats)
        if self.restore_stats:  # a copy taken before each optimizer step's first forward pass
            self.bn_stats = ParameterTuple(stats)
            self.bn_stats_before = self.bn_stats.clone(prefix="overflow_backup", init="same")
        self.clip_grad = clip_grad
        self.hyper_map = ops.HyperMap()
        self.zero = Tensor(0.0, ms.float32)
        self.one = Tensor(1, ms.int32)

        self.grad_reducer = ops.identity
        if _get_parallel_mode() in (ParallelMode.DATA_PARALLEL, ParallelMode.HYBRID_PARALLEL):
            self.grad_reducer = nn.DistributedGradReducer(self.weights, _get_gradients_mean(), _get_device_num())

        schedule = PRepBNSchedule.of(model)
        self.has_schedule = schedule is not None
        if self.has_schedule:
            schedule.claim()  # counted here, per optimizer step, instead of per training forward by the model
            self.gamma_step = schedule.step

        self.accumulate_steps = int(accumulate_steps)
        if self.accumulate_steps > 1:
            self.accum_grads = self.weights.clone(prefix="accum_grad", init="zeros")
            self.micro_step = Parameter(Tensor(0, ms.int32), name="accum_micro_step", requires_grad=False)
            self.accum_factor = Tensor(1.0 / self.accumulate_steps, ms.float32)

        self.use_ema = ema_decay is not None
        if self.use_ema:
            params = list(model.get_parameters())
            floats = [p for p in params if p.dtype in (ms.float32, ms.float16, ms.bfloat16)]
            others = [p for p in params if p.dtype not in (ms.float32, ms.float16, ms.bfloat16)]
            self.ema_float_src = ParameterTuple(floats)
            self.ema_float = self.ema_float_src.clone(prefix="ema", init="same")
            self.has_int_ema = bool(others)
            if self.has_int_ema:
                self.ema_other_src = ParameterTuple(others)
                self.ema_other = self.ema_other_src.clone(prefix="ema", init="same")
            self.ema_decay = Tensor(ema_decay, ms.float32)

    def state_parameters(self):
        """The loss-scale state a resumed run needs (dynamic scale, steps since its last change, skipped steps);
        empty for a fixed scale without overflow skipping."""
        params = [self.loss_scale, self.good_steps] if self.dynamic_scale else []
        return params + ([self.skipped_steps] if self.skip_overflow else [])

    def loss_scale_state(self):
        """``(loss scale, optimizer steps skipped on overflow)`` as Python numbers."""
        scale = float(self.loss_scale.asnumpy())
        return scale, int(self.skipped_steps.asnumpy()) if self.skip_overflow else 0

    def ema_parameters(self):
        """The ``ema.*`` Parameters (empty without EMA)."""
        if not self.use_ema:
            return []
        return list(self.ema_float) + (list(self.ema_other) if self.has_int_ema else [])

    def construct(self, images, labels):
        if self.restore_stats:
            if self.accumulate_steps == 1:
                images = ops.depend(images, self.hyper_map(ops.assign, self.bn_stats_before, self.bn_stats))
            elif self.micro_step == 0:
                images = ops.depend(images, self.hyper_map(ops.assign, self.bn_stats_before, self.bn_stats))
        loss = self.network(images, labels)
        scale = self.loss_scale * 1.0  # the value of this micro-batch (a dynamic scale changes after the step)
        sens = ops.fill(loss.dtype, loss.shape, 1.0) * scale.astype(loss.dtype)
        grads = self.grad(self.network, self.weights)(images, labels, sens)
        grads = self.hyper_map(ops.partial(_unscale, scale), grads)
        if self.accumulate_steps == 1:
            return loss, self._optimizer_step(grads)
        loss = ops.depend(loss, self.hyper_map(ops.partial(_accumulate, self.accum_factor), self.accum_grads, grads))
        loss = ops.depend(loss, ops.assign_add(self.micro_step, self.one))
        grad_norm = self.zero
        if self.micro_step >= self.accumulate_steps:
            grad_norm = self._optimizer_step(self.accum_grads)
            grad_norm = ops.depend(grad_norm, self.hyper_map(_clear, self.accum_grads))
            grad_norm = ops.depend(grad_norm, ops.assign(self.micro_step, ops.zeros_like(self.micro_step)))
        return loss, grad_norm

    def _optimizer_step(self, grads):
        grads = self.grad_reducer(grads)
        grad_norm = ops.sqrt(ops.addn(self.hyper_map(_square_sum, grads)))
        if not self.skip_overflow:
            return self._update(grads, grad_norm)
        # the reduced gradients are the same on every rank, so every rank skips the same steps
        if ops.stack(self.hyper_map(_finite, grads)).all():
            grad_norm = self._update(grads, grad_norm)
            if self.dynamic_scale:
                grad_norm = ops.depend(grad_norm, ops.assign_add(self.good_steps, self.one))
                if self.good_steps >= self.scale_window:
                    grad_norm = ops.depend(grad_norm, ops.assign(self.loss_scale, self.loss_scale * self.scale_factor))
                    grad_norm = ops.depend(grad_norm, ops.assign(self.good_steps, ops.zeros_like(self.good_steps)))
        else:
            grad_norm = ops.depend(grad_norm, ops.assign_add(self.skipped_steps, self.one))
            if self.restore_stats:
                grad_norm = ops.depend(grad_norm, self.hyper_map(ops.assign, self.bn_stats, self.bn_stats_before))
            if self.dynamic_scale:
                grad_norm = ops.depend(grad_norm, ops.assign(
                    self.loss_scale, ops.maximum(self.loss_scale / self.scale_factor, self.min_scale)))
                grad_norm = ops.depend(grad_norm, ops.assign(self.good_steps, ops.zeros_like(self.good_steps)))
        return grad_norm

    def _update(self, grads, grad_norm):
        """Clip, apply, then advance γ and the EMA: one optimizer step."""
        if self.clip_grad is not None:
            coef = ops.minimum(self.clip_grad / (grad_norm + 1e-6), 1.0)
            grads = self.hyper_map(ops.partial(_scale, coef), grads)
        grad_norm = ops.depend(grad_norm, self.optimizer(grads))
        if self.has_schedule:
            grad_norm = ops.depend(grad_norm, ops.assign_add(self.gamma_step, self.one))
        if self.use_ema:
            grad_norm = ops.depend(grad_norm, self.hyper_map(ops.partial(_ema_blend, self.ema_decay),
                                                             self.ema_float, self.ema_float_src))
            if self.has_int_ema:
                grad_norm = ops.depend(grad_norm, self.hyper_map(ops.assign, self.ema_other, self.ema_other_src))
        return grad_norm


def param_groups(net, weight_decay):
    """Two groups as the reference: no weight decay for 1-D parameters (biases, norm affines, RepBN
    ``alpha``), names ending in ``.bias``, names in ``net.no_weight_decay()`` and names containing one of
    ``net.no_weight_decay_keywords()`` (MindCV's Swin defines it); everything else (incl. SLA positional
    encodings) decays."""
    skip = set(net.no_weight_decay()) if hasattr(net, "no_weight_decay") else set()
    keywords = tuple(net.no_weight_decay_keywords()) if hasattr(net, "no_weight_decay_keywords") else ()
    params = net.trainable_params()
    decay, no_decay = [], []
    for p in params:
        if p.ndim <= 1 or p.name.endswith(".bias") or p.name in skip or any(k in p.name for k in keywords):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]] + [{"order_params": params}]


def build_optimizer(net, args, lrs):
    """MindCV ``create_optimizer`` over the two weight-decay groups with the per-step lr list ``lrs``."""
    kwargs = {"beta1": args.beta1, "beta2": args.beta2} if args.opt.lower() in ("adam", "adamw") else {}
    factory_logger = logging.getLogger("mindcv.optim.optim_factory")
    level = factory_logger.level
    factory_logger.setLevel(logging.ERROR)  # "auto" only means: take our groups as they are
    try:
        return create_optimizer(param_groups(net, args.weight_decay), opt=args.opt, lr=lrs,
                                weight_decay=args.weight_decay, momentum=args.momentum,
                                weight_decay_filter="auto", **kwargs)
    finally:
        factory_logger.setLevel(level)
