"""The γ (PRepBN) schedule a training run starts from, resolved from its recipe and its ``ckpt_file``.

γ is evaluated inside the model from its :class:`~slab_ms.layers.PRepBNSchedule`, counted in optimizer steps:
the γ step = the step the run started from (0, or a fine-tuned checkpoint's) + ``global_step``.
"""
import math

from ..layers import PRepBNSchedule, check_schedule_fits
from .config import ConfigError

__all__ = ["resolve_prepbn_schedule", "start_prepbn_schedule"]


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
    default. A schedule longer than the run is refused (:func:`~slab_ms.layers.check_schedule_fits`).
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
        check_schedule_fits(total_steps, decay, warmup, source=source)
    except ValueError as err:
        room = total_steps - warmup  # steps left for the decay after the warm-up
        ratio = math.floor(room / total_steps * 1000) / 1000
        fix = (f"Set prepbn_decay_steps <= {room} or prepbn_decay_ratio <= {ratio:g}"
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
