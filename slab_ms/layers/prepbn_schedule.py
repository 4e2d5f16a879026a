"""The PRepBN γ schedule: one per model, counted in optimizer steps (paper Sec. 4.2).

γ(step) = clip((T − (step − warm)) / T, 0, 1): LayerNorm only while ``step < warm``, then a linear
decay from 1 to 0 over T optimizer steps. Every PRepBN of a model reads the same three non-trainable
int32 Parameters, owned by the model (so a checkpoint holds them once, under the model-level names
below) and advanced inside a compiled train graph with ``ops.assign_add``, or on the host with
:meth:`PRepBNSchedule.advance`. This module is the only one that knows the Parameters' names.
"""
import logging

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, ops

__all__ = ["PRepBNSchedule", "gamma", "advance_in_training", "check_schedule_fits"]

_NAMES = ("prepbn_step", "prepbn_decay_steps", "prepbn_warmup_steps")
_logger = logging.getLogger(__name__)


def gamma(step, decay_steps, warmup_steps):
    """γ = clip((T − (step − warm)) / T, 0, 1), evaluated in-graph on float Tensors and on the host on
    ``np.float64`` values (the one definition of the formula)."""
    return ((decay_steps - (step - warmup_steps)) / decay_steps).clip(0.0, 1.0)


_ONE = Tensor(1, ms.int32)


def advance_in_training(owner):
    """One γ step per training forward of ``owner``, the model that owns the schedule, unless a trainer claimed
    the schedule (:meth:`PRepBNSchedule.claim`); called at the end of the owner's ``construct``, after every
    PRepBN layer read the step. The reference's norms count their own training forwards the same way."""
    if owner.training and getattr(owner, "prepbn_advances_itself", False):
        ops.assign_add(owner.prepbn_step, _ONE)


def _int_param(value, name):
    return Parameter(Tensor(int(value), ms.int32), name=name, requires_grad=False)


def _check_decay(decay_steps):
    if int(decay_steps) <= 0:
        raise ValueError(f"the PRepBN schedule needs decay_steps T > 0, got {decay_steps}; a model with "
                         "'0 decay steps' is a pure-RepBN model (norm='repbn').")


def _check_values(step, decay_steps, warmup_steps):
    _check_decay(decay_steps)
    if int(warmup_steps) < 0 or int(step) < 0:
        raise ValueError(f"the PRepBN schedule needs step >= 0 and warmup_steps >= 0, got {step}, {warmup_steps}")


def check_schedule_fits(total_steps, decay_steps, warmup_steps=0, start_step=0, source=""):
    """Refuse a schedule (T = ``decay_steps`` after ``warmup_steps``) whose decay does not end within a run of
    ``total_steps`` optimizer steps started at ``start_step``: training would end with γ > 0 while evaluation is
    pure RepBN. Returns the number of steps of decay left (0 for a finished schedule)."""
    _check_values(start_step, decay_steps, warmup_steps)
    left = max(warmup_steps + decay_steps - start_step, 0)
    if left > total_steps:
        source = f" ({source})" if source else ""
        raise ValueError(
            f"the γ schedule is longer than the run: T = {decay_steps}{source}, warm-up {warmup_steps}, from step "
            f"{start_step}: {left} steps of decay left > {total_steps} optimizer steps in this run. Training would "
            "end with γ > 0 while evaluation is pure RepBN.")
    return left


class PRepBNSchedule:
    """The three Parameters of one γ schedule and everything that reads or writes them.

    ``PRepBNSchedule(decay_steps, warmup_steps)`` makes a new schedule for the PRepBN layers of a model
    being built; :meth:`attach` then hands it to the model. ``PRepBNSchedule.of(net)`` is the schedule of
    a built model (None without PRepBN).

    Until a trainer :meth:`claim` s it, the model advances its own step once per training forward
    (:func:`advance_in_training`), so a PRepBN model trained by any loop (MindSpore's ``Model``, MindCV's
    trainer, a user's loop) decays γ; a trainer that counts optimizer steps itself (this package's
    ``TrainStep``, ``GammaDecay``) claims it before its graph compiles, and the model stops counting.
    """

    def __init__(self, decay_steps, warmup_steps=0, step=0):
        _check_values(step, decay_steps, warmup_steps)
        self.parameters = tuple(_int_param(v, n) for v, n in zip((step, decay_steps, warmup_steps), _NAMES))

    @property
    def step(self):
        return self.parameters[0]

    @classmethod
    def of(cls, net):
        """The schedule ``net`` owns, or None for a model without PRepBN layers."""
        if not all(hasattr(net, name) for name in _NAMES):
            return None
        schedule = cls.__new__(cls)
        schedule.parameters = tuple(getattr(net, name) for name in _NAMES)
        schedule.owner = net
        return schedule

    @classmethod
    def require(cls, net):
        schedule = cls.of(net)
        if schedule is None:
            raise ValueError(f"{type(net).__name__} has no PRepBN layers, so it has no γ schedule.")
        return schedule

    def attach(self, net):
        """Make ``net`` the owner: the Parameters become its attributes and are saved under these model-level
        names (call once the PRepBN layers are built; building them prefixes the names with theirs)."""
        for name, param in zip(_NAMES, self.parameters):
            setattr(net, name, param)
            param.name = name
        net.prepbn_advances_itself = True
        self.owner = net

    def claim(self):
        """The caller advances the step from now on (once per optimizer step): the owner stops counting its
        training forwards. A graph of the owner compiled before the claim keeps counting (the flag is read when a
        graph compiles), so claim before the first training call; ``GammaDecay`` reports a double count."""
        self.owner.prepbn_advances_itself = False

    @staticmethod
    def detach(net):
        """Remove the schedule from ``net`` (a deploy form without PRepBN layers has no reader left)."""
        for name in _NAMES:
            if hasattr(net, name):
                delattr(net, name)
        net.prepbn_advances_itself = False

    @staticmethod
    def is_schedule_parameter(name):
        """True for the checkpoint name of a schedule Parameter."""
        return name in _NAMES

    def ids(self):
        return {id(p) for p in self.parameters}

    def state(self):
        """``dict(step, decay_steps, warmup_steps)`` read from the Parameters."""
        return dict(zip(("step", "decay_steps", "warmup_steps"), (int(p.asnumpy()) for p in self.parameters)))

    def gamma_value(self, step=None):
        """γ at ``step`` (default: the current step) as a Python float."""
        s = self.state()
        step = s["step"] if step is None else step
        return float(gamma(np.float64(step), np.float64(s["decay_steps"]), np.float64(s["warmup_steps"])))

    def end_step(self):
        """The step from which γ = 0."""
        s = self.state()
        return s["warmup_steps"] + s["decay_steps"]

    def set(self, step=None, decay_steps=None, warmup_steps=None):
        """Set any of the three values; ``ops.assign`` keeps them visible to already compiled graphs."""
        if decay_steps is not None:
            _check_decay(decay_steps)
        for value, param in zip((step, decay_steps, warmup_steps), self.parameters):
            if value is not None:
                if int(value) < 0:
                    raise ValueError(f"{param.name} must be >= 0, got {value}")
                ops.assign(param, Tensor(int(value), ms.int32))

    def advance(self, steps=1):
        """Advance the step on the host by ``steps`` optimizer steps."""
        ops.assign_add(self.step, Tensor(int(steps), ms.int32))

    def check_fits(self, total_steps, start_step=None, source=""):
        """:func:`check_schedule_fits` for this schedule from ``start_step`` (default: the current step)."""
        s = self.state()
        start = s["step"] if start_step is None else start_step
        return check_schedule_fits(total_steps, s["decay_steps"], s["warmup_steps"], start, source)

    def unfinished(self):
        """None when γ = 0, else a sentence with the step and γ: evaluation is pure RepBN, so such a model is
        evaluated (and folded) in a form it was not trained in."""
        value = self.gamma_value()
        if value == 0.0:
            return None
        s = self.state()
        return (f"its γ schedule is unfinished: step {s['step']} of warm-up {s['warmup_steps']} + T "
                f"{s['decay_steps']}, γ = {value:.4f} (training forward = {value:.4f}·LayerNorm + "
                f"{1 - value:.4f}·RepBN; evaluation and the deploy form are pure RepBN)")

    @classmethod
    def warn_if_unfinished(cls, net, doing):
        """Log once per model (``doing``: "evaluating", "folding", ...) when ``net``'s schedule is unfinished;
        returns the sentence, or None."""
        schedule = cls.of(net)
        reason = schedule.unfinished() if schedule else None
        if reason and not getattr(net, "_warned_unfinished_prepbn", False):
            _logger.warning("%s %s: %s", doing, type(net).__name__, reason)
            object.__setattr__(net, "_warned_unfinished_prepbn", True)
        return reason

    def verify_finished(self, expected_step=None):
        """Raise unless γ = 0 (and the step is ``expected_step`` when given): the model trained into the pure
        RepBN form it is evaluated in."""
        s = self.state()
        value = self.gamma_value()
        if value != 0.0 or (expected_step is not None and s["step"] != expected_step):
            expected = f" (expected {expected_step})" if expected_step is not None else ""
            raise RuntimeError(f"training ended at prepbn step {s['step']}{expected} with γ={value} (expected γ = 0)")
