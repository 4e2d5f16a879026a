"""Safety of a run's checkpoint folder, and which of its checkpoints are good.

The folder: rank 0 (the only writer) first checks that ``ckpt_dir`` is writable (a probe file), then holds an
OS lock on it for the whole run (``utils.RunLock``: a second run into the same folder exits at once naming the
holder; a lock left by a killed run is released by the kernel), and removes the temporaries of killed writers
(``RunFolder``). A run that fails to start removes the folder it created, if it holds nothing but the lock file.

The checkpoints (``CheckpointRecord``): a checkpoint is written only if every parameter is finite, and it is
called good only once the loss computed with its weights (the next step's) is finite too. When training stops
on a non-finite value, every checkpoint not shown good that way (the run's newest ones, or the one it resumed
from) is moved aside (``*.nonfinite``), so the "last good checkpoint" the message names is the one
``--resume auto`` continues from.
"""
import os

import numpy as np
import mindspore as ms

from ..utils import RunLock, check_writable_folder, remove_stale_temporaries
from ..weights.train_state import find_latest

__all__ = ["NonFiniteLossError", "RunFolder", "CheckpointRecord", "non_finite_names"]


class NonFiniteLossError(RuntimeError):
    """The loss, the gradient norm or the parameters became NaN/inf; nothing was saved after it."""


def non_finite_names(params):
    """Names of the parameters holding NaN or inf."""
    return [p.name for p in params if p.dtype in (ms.float16, ms.float32, ms.float64, ms.bfloat16)
            and not np.isfinite(p.asnumpy().astype(np.float32)).all()]


class RunFolder:
    """``ckpt_dir`` probed, locked for the run and cleared of killed writers' temporaries; ``close`` releases it."""

    def __init__(self, ckpt_dir, log):
        self.created = check_writable_folder(ckpt_dir, "ckpt_dir")
        self.lock = RunLock(ckpt_dir).acquire()  # a loser removes nothing: the folder is the winner's
        for path in remove_stale_temporaries(ckpt_dir):
            log(f"removed '{path}', a temporary file left by a killed run")

    def close(self, failed=False):
        """Release the lock; after a failed start also remove the folder this run created (if it holds nothing but
        the lock file), while still holding the lock."""
        if self.lock is not None:
            if failed and self.created:
                self.lock.remove_folder()
            else:
                self.lock.release()
            self.lock = None


class CheckpointRecord:
    """The run's checkpoints not yet shown good (``pending``) and the newest good one (``last_good``).

    ``writer``: whether this process moves files (rank 0); every rank keeps the record."""

    def __init__(self, ckpt_dir, model, writer):
        self.ckpt_dir, self.model, self.writer = ckpt_dir, model, writer
        self.last_good = None  # the newest checkpoint whose weights gave a finite loss (or the run ended)
        self.pending = []  # checkpoints (this run's, or the one it resumed from) no finite loss followed yet

    def written(self, path):
        """A checkpoint was written (or resumed from): good once a finite loss follows its weights."""
        self.pending.append(path)

    def confirm(self):
        """A finite loss was computed with the weights of the newest checkpoint: it is good."""
        if self.pending:
            self.last_good = self.pending[-1]
            self.pending = []

    def protected(self):
        """The checkpoints pruning must keep: the last good one until a newer one is shown good."""
        return [self.last_good] if self.last_good else []

    def stop(self, reason, advice):
        """Raise NonFiniteLossError after moving aside (``*.nonfinite``) the checkpoints no finite loss followed;
        the last good checkpoint it names is then the newest left, the one ``--resume auto`` takes."""
        moved = []
        if self.writer:
            for path in self.pending:
                if os.path.isfile(path):
                    os.replace(path, path + ".nonfinite")
                    moved.append(path + ".nonfinite")
        self.pending = []
        aside = (f" Moved aside, as no finite loss followed their weights: {', '.join(moved)}." if moved else "")
        last = self.last_good or find_latest(self.ckpt_dir, self.model)
        raise NonFiniteLossError(f"{reason}; the last good checkpoint is "
                                 f"{last or 'none (no checkpoint with finite weights and loss was written yet)'}."
                                 f"{aside} {advice}")
