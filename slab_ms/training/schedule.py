"""Learning-rate and γ (PRepBN) schedules, both counted in optimizer steps.

The lr list is indexed by the optimizer's ``global_step``; γ is evaluated inside the model from its
:class:`~slab_ms.layers.PRepBNSchedule`. The train step advances both once per optimizer step, so they stay in
lockstep under gradient accumulation, resume and dataset sinking: the γ step = the step the run
started from (0, or a fine-tuned checkpoint's) + ``global_step``.
"""
import math

from mindcv.scheduler import create_scheduler

from ..layers import PRepBNSchedule
from .config import ConfigError

__all__ = ["scaled_lrs", "build_lr_schedule", "timm_cosine_lr", "resolve_prepbn_schedule",
           "start_prepbn_schedule"]


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


def _recipe_decay(args, total_steps):
    """``(T, where it comes from)`` when the recipe sets prepbn_decay_steps or prepbn_decay_ratio, else None."""
    if args.prepbn_decay_steps is not None:
        return args.prepbn_decay_steps, "prepbn_decay_steps"
    if args.prepbn_decay_ratio is not None:
        decay = int(args.prepbn_decay_ratio * total_steps)
        source = f"prepbn_decay_ratio {args.prepbn_decay_ratio} × {total_steps} steps"
        if decay < 1:
            raise ConfigError(f"{source} gives T = 0; raise prepbn_decay_ratio")
        return decay, source
    return None


def resolve_prepbn_schedule(net, args, total_steps):
    """``(decay_steps, warmup_steps)`` of a γ schedule starting at step 0 in this run, or None for a model
    without PRepBN.

    T is ``prepbn_decay_steps``, else ``prepbn_decay_ratio`` × total optimizer steps, else the model's
    default. A schedule longer than the run is refused (:meth:`PRepBNSchedule.check_fits`).
    """
    own = PRepBNSchedule.of(net)
    schedule = own.state() if own else None
    asked = args.prepbn_decay_steps is not None or args.prepbn_decay_ratio is not None or args.prepbn_warmup_steps
    if schedule is None:
        if asked:
            raise ConfigError(f"model '{args.model}' has no PRepBN layers (pure RepBN / no γ schedule); remove "
                              "prepbn_decay_steps / prepbn_decay_ratio / prepbn_warmup_steps from the recipe")
        return None
    decay, source = _recipe_decay(args, total_steps) or (schedule["decay_steps"], f"the default of {args.model}")
    warmup = args.prepbn_warmup_steps
    try:
        PRepBNSchedule(decay, warmup).check_fits(total_steps, source=source)
    except ValueError as err:
        room = total_steps - warmup  # steps left for the decay after the warm-up
        fix = (f"Set prepbn_decay_steps <= {room} or prepbn_decay_ratio <= {math.floor(room / total_steps * 1000) / 1000:g}"
               if room > 0 else f"Set prepbn_warmup_steps < {total_steps}")
        raise ConfigError(f"{err} {fix}.") from err
    return decay, warmup


def start_prepbn_schedule(net, args, total_steps):
    """The γ schedule this run starts from: ``((step, decay_steps, warmup_steps), note)``; ``(None, None)``
    for a model without PRepBN. ``net`` already holds the ``ckpt_file`` weights, if any.

    * A new run, or ``prepbn_schedule: restart``: step 0 and :func:`resolve_prepbn_schedule`'s T and
      warm-up, so γ starts at 1 (fine-tuning goes through LayerNorm → RepBN again).
    * ``ckpt_file`` with ``prepbn_schedule: continue`` (the default): the loaded step, T and warm-up
      are kept and γ goes on from where the checkpoint was (the converter sets them from an official
      checkpoint's ``warm`` / ``iter`` / ``total_step``). A finished schedule fine-tunes as pure RepBN
      (γ = 0 throughout). An unfinished one must end within this run, and a T or warm-up the recipe sets
      must be the checkpoint's: anything else is an error pointing at ``restart``. Once the decay is
      finished these keys no longer matter; the note says they are unused.

    ``note`` is the one log line saying which of these happened and γ at the start (None for a new run).
    """
    own = PRepBNSchedule.of(net)
    loaded = own.state() if own else None
    if loaded is None or not args.ckpt_file or args.prepbn_schedule == "restart":
        resolved = resolve_prepbn_schedule(net, args, total_steps)
        if resolved is None:
            return None, None
        start = (0, *resolved)
        if not args.ckpt_file:
            return start, None
        return start, (f"{args.ckpt_file}: weights loaded; prepbn_schedule restart: its γ schedule (step "
                       f"{loaded['step']}, T={loaded['decay_steps']}, warm-up {loaded['warmup_steps']}, "
                       f"γ={own.gamma_value():.4f}) is replaced by this run's (T={resolved[0]}, warm-up "
                       f"{resolved[1]}): γ = 1.0000 at the start")

    step, decay, warmup = loaded["step"], loaded["decay_steps"], loaded["warmup_steps"]
    gamma, left = own.gamma_value(), decay + warmup - step
    where = (f"'{args.ckpt_file}' is at step {step} of its γ schedule (T={decay}, warm-up {warmup}, "
             f"γ={gamma:.4f})")
    recipe_decay = _recipe_decay(args, total_steps)
    conflicts, unset = [], []
    if recipe_decay is not None and recipe_decay[0] != decay:
        conflicts.append(f"T = {recipe_decay[0]} ({recipe_decay[1]})")
        unset.append("--prepbn_decay_steps none --prepbn_decay_ratio none")
    if args.prepbn_warmup_steps and args.prepbn_warmup_steps != warmup:
        conflicts.append(f"prepbn_warmup_steps {args.prepbn_warmup_steps}")
        unset.append("--prepbn_warmup_steps 0")
    if left <= 0:
        unused = f"; the recipe's {' and '.join(conflicts)} is unused" if conflicts else ""
        return (step, decay, warmup), (
            f"{args.ckpt_file}: weights loaded; prepbn_schedule continue: its γ schedule is finished (step "
            f"{step} ≥ warm-up {warmup} + T {decay}), so γ = 0.0000 at the start and throughout: pure RepBN "
            f"fine-tuning{unused}")
    if conflicts:
        raise ConfigError(
            f"prepbn_schedule continue: {where}, but the recipe asks for {' and '.join(conflicts)}. To continue "
            f"the checkpoint's decay remove that from the recipe ({' '.join(unset)}); to start γ at 1 again with "
            "the recipe's schedule pass --prepbn_schedule restart.")
    try:
        own.check_fits(total_steps, source=args.ckpt_file)
    except ValueError as err:
        raise ConfigError(f"prepbn_schedule continue: {where}: {err} Train longer, or pass --prepbn_schedule "
                          "restart with a T that fits.") from err
    return (step, decay, warmup), (
        f"{args.ckpt_file}: weights loaded; prepbn_schedule continue: γ goes on from its step {step} "
        f"(T={decay}, warm-up {warmup}): γ = {gamma:.4f} at the start, 0 after {left} of this run's {total_steps} "
        "optimizer steps")
