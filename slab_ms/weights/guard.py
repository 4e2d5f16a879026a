"""What every checkpoint reader accepts before it builds a tensor: a memory budget for the bytes it materializes
or decompresses, tensor names, finite values, and bounded text for messages about untrusted objects.

The budget is ``MODEL_FACTOR`` times the model's parameter bytes (a train.py checkpoint holds the weights, two
Adam moments and the EMA copy: four times), at least ``FLOOR_BYTES``; without a model, ``UNKNOWN_MODEL_BYTES``.
The tools' ``--max_checkpoint_gb`` replaces it and ``--allow_nonfinite`` lets NaN / inf values through
(:func:`configure`).
"""
import reprlib

import numpy as np

__all__ = ["configure", "Budget", "CheckpointBudgetError", "NonFiniteCheckpointError", "check_name",
           "check_finite", "short_repr"]

MODEL_FACTOR = 8
FLOOR_BYTES = 1 << 30
UNKNOWN_MODEL_BYTES = 4 << 30
MAX_NAME_CHARS = 1024
FLAGS = "--max_checkpoint_gb"

_settings = {"max_bytes": None, "allow_nonfinite": False}


class CheckpointBudgetError(ValueError):
    """A checkpoint that would take more memory than the budget once read."""


class NonFiniteCheckpointError(ValueError):
    """A checkpoint holding NaN or inf values."""


def configure(max_checkpoint_gb=None, allow_nonfinite=False):
    """The tools' ``--max_checkpoint_gb`` (None: relative to the model) and ``--allow_nonfinite``, for every reader
    in this process."""
    if max_checkpoint_gb is not None and not max_checkpoint_gb > 0:
        raise ValueError(f"--max_checkpoint_gb must be > 0, got {max_checkpoint_gb}")
    _settings["max_bytes"] = None if max_checkpoint_gb is None else int(max_checkpoint_gb * (1 << 30))
    _settings["allow_nonfinite"] = bool(allow_nonfinite)


def _gib(count):
    return f"{count / (1 << 30):.3g} GiB"


class Budget:
    """Bytes a reader of ``path`` may materialize in all; :meth:`take` counts them and refuses the excess."""

    def __init__(self, path, net=None):
        self.path, self.used = path, 0
        if _settings["max_bytes"] is not None:
            self.limit, self.why = _settings["max_bytes"], f"{FLAGS} {_gib(_settings['max_bytes'])}"
        elif net is not None:
            model = sum(int(p.size) * p.itemsize for p in net.get_parameters())
            self.limit = max(FLOOR_BYTES, MODEL_FACTOR * model)
            self.why = f"{MODEL_FACTOR}x the model's {_gib(model)} of parameters, at least {_gib(FLOOR_BYTES)}"
        else:
            self.limit, self.why = UNKNOWN_MODEL_BYTES, f"{_gib(UNKNOWN_MODEL_BYTES)} without a model"

    def take(self, count, what):
        """Count ``count`` more bytes for ``what``; raise :class:`CheckpointBudgetError` past the limit."""
        self.used += int(count)
        if self.used > self.limit:
            raise CheckpointBudgetError(
                f"'{self.path}': {what} brings what reading it takes to {_gib(self.used)}, over the budget of "
                f"{_gib(self.limit)} ({self.why}); nothing was allocated. A memory bomb, or a checkpoint of a much "
                f"larger model: if the file is trusted, raise the budget with {FLAGS}")


def check_name(name, path, error=ValueError):
    """A tensor name is text of 1 to ``MAX_NAME_CHARS`` printable characters; else ``error`` naming the file."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS or not name.isprintable():
        raise error(f"'{path}': a tensor name {short_repr(name)} is not 1 to {MAX_NAME_CHARS} printable "
                         "characters (a damaged or crafted file)")
    return name


def check_finite(name, array, path):
    """Refuse (:class:`NonFiniteCheckpointError`) a floating tensor with NaN / inf values unless allowed."""
    if _settings["allow_nonfinite"] or array.dtype.kind not in "fc":
        return
    finite = np.isfinite(array)
    if not finite.all():
        nan = int(np.isnan(array).sum())
        raise NonFiniteCheckpointError(
            f"'{path}': tensor '{name}' holds {nan} NaN and {finite.size - int(finite.sum()) - nan} inf values of "
            f"{finite.size} (weights of a diverged run?); pass --allow_nonfinite to load it anyway")


class _BoundedRepr(reprlib.Repr):
    def repr_bytes(self, value, level):  # reprlib's default would repr the whole bytes object first
        return repr(value[:self.maxstring]) + ("..." if len(value) > self.maxstring else "")


_REPR = _BoundedRepr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40
for _attr in ("maxtuple", "maxlist", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_REPR, _attr, 6)


def short_repr(value):
    """``repr`` of an untrusted value built within fixed bounds of depth and length (never the whole object)."""
    try:
        return _REPR.repr(value)
    except Exception:  # pylint: disable=broad-except  # a crafted object's own repr may fail
        return f"<{type(value).__name__}>"
