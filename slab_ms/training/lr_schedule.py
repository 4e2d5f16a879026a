"""Learning-rate lists, one lr per optimizer step.

The list is indexed by the optimizer's ``global_step``, which the train step advances once per optimizer step
(as it does the γ step), so lr and γ stay in lockstep under gradient accumulation, resume and dataset sinking.
"""
import math

from mindcv.scheduler import create_scheduler

from .config import ConfigError

__all__ = ["scaled_lrs", "build_lr_schedule", "timm_cosine_lr"]


def scaled_lrs(args, total_batch):
    """(lr, warmup_lr, min_lr), multiplied by total_batch / scale_lr_batch as in the reference."""
    factor = total_batch / args.scale_lr_batch if args.scale_lr_batch else 1.0
    return args.lr * factor, args.warmup_lr * factor, args.min_lr * factor


def timm_cosine_lr(steps_per_epoch, epochs, cooldown_epochs, warmup_epochs, lr, warmup_lr, min_lr):
    """The reference's per-iteration cosine (timm 0.4.12 ``CosineLRScheduler``, ``t_in_epochs=False``).

    f(t): linear warm-up from ``warmup_lr`` over ``warmup_epochs``, then
    ``min_lr + (lr - min_lr)(1 + cos(pi t / t_initial)) / 2`` on the absolute step ``t`` (the warm-up
    is not a prefix), ``min_lr`` during cool-down. The reference updates the lr *after* each optimizer
    step, so step ``g`` trains with f(g - 1) (and step 0 with f(0)); this list reproduces that.
    """
    t_initial = epochs * steps_per_epoch
    warmup_t = int(round(warmup_epochs * steps_per_epoch))

    def f(t):
        if t < warmup_t:
            return warmup_lr + t * (lr - warmup_lr) / warmup_t
        if t < t_initial:
            return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t / t_initial))
        return min_lr

    total = (epochs + cooldown_epochs) * steps_per_epoch
    return [f(max(g - 1, 0)) for g in range(total)]


def build_lr_schedule(args, steps_per_epoch, total_batch):
    """Per-optimizer-step lr list covering epochs + cooldown_epochs."""
    lr, warmup_lr, min_lr = scaled_lrs(args, total_batch)
    if args.scheduler == "timm_cosine":
        return timm_cosine_lr(steps_per_epoch, args.epochs, args.cooldown_epochs, args.warmup_epochs, lr,
                              warmup_lr, min_lr)
    if float(args.warmup_epochs) != int(args.warmup_epochs):
        raise ConfigError(f"scheduler '{args.scheduler}' needs whole warmup_epochs, got {args.warmup_epochs}")
    warmup_epochs = int(args.warmup_epochs)
    try:
        lrs = create_scheduler(steps_per_epoch, scheduler=args.scheduler, lr=lr, min_lr=min_lr,
                               warmup_epochs=warmup_epochs, warmup_factor=warmup_lr / lr if lr else 0.0,
                               decay_epochs=args.epochs - warmup_epochs, num_epochs=args.epochs)
    except ValueError as err:
        raise ConfigError(f"scheduler: {err} (or 'timm_cosine')") from err
    return list(lrs) + [min_lr] * (args.cooldown_epochs * steps_per_epoch)
