"""Training checkpoints: atomic, self-describing, resumable mid-epoch.

A resumable checkpoint ``<ckpt_dir>/<model>-<EEEE>_<SSSSSS>.ckpt`` holds the model parameters (with the
γ schedule's three counters), the optimizer state
(moments, beta powers, ``global_step`` = lr index), the ``ema.*`` weights, and the position:
``epoch_num`` = epochs finished (training epochs, then BN re-calibration epochs) and ``step_num`` =
optimizer steps already taken in the next epoch. They are only written between optimizer steps, so
no accumulation state is needed; the loss-scale state (dynamic scale, skipped steps) is saved when the run
has one. An epoch checkpoint written after a validation also holds ``val_top1``, which ranks it under the
``top_k`` policy. The final ``<model>.ckpt`` holds the weights and ``ema.*``.
Every file is written to a temporary name and renamed, so a killed run never leaves a torn file.
"""
import glob
import os
import re

import numpy as np
import mindspore as ms

from .checkpoint import load_parameters, read_ckpt, save_checkpoint

__all__ = ["resumable_name", "list_resumable", "find_latest", "save_train_checkpoint", "save_final_checkpoint",
           "load_train_checkpoint", "prune_checkpoints", "read_val_top1", "checkpoints_to_keep"]

_POSITION_RE = re.compile(r"-(\d{4})_(\d{6})\.ckpt$")


def resumable_name(model_name, epoch_num, step_num):
    return f"{model_name}-{epoch_num:04d}_{step_num:06d}.ckpt"


def list_resumable(ckpt_dir, model_name):
    """``[(epoch_num, step_num, path)]`` of this model's resumable checkpoints, oldest first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(ckpt_dir), f"{glob.escape(model_name)}-*_*.ckpt")):
        match = _POSITION_RE.search(os.path.basename(path))
        if match and os.path.basename(path) == resumable_name(model_name, *map(int, match.groups())):
            found.append((int(match.group(1)), int(match.group(2)), path))
    return sorted(found)


def find_latest(ckpt_dir, model_name):
    found = list_resumable(ckpt_dir, model_name)
    return found[-1][2] if found else None


def _optimizer_state(optimizer, model):
    model_ids = {id(p) for p in model.get_parameters()}
    return [p for p in optimizer.get_parameters() if id(p) not in model_ids and p.name != "learning_rate"]


def _train_state(model, optimizer, train_step):
    return _optimizer_state(optimizer, model) + train_step.ema_parameters() + train_step.state_parameters()


def save_train_checkpoint(ckpt_dir, model_name, model, optimizer, train_step, epoch_num, step_num, val_top1=None,
                          epoch_losses=()):
    """Write a resumable checkpoint atomically (with ``val_top1`` when given, and the losses of the epoch's steps
    so far, which a resumed run's epoch mean includes); returns its path."""
    if train_step.accumulate_steps > 1 and int(train_step.micro_step.asnumpy()) != 0:
        raise RuntimeError("internal: checkpoint requested in the middle of a gradient-accumulation cycle")
    params = list(model.get_parameters()) + _train_state(model, optimizer, train_step)
    entries = [{"name": p.name, "data": p} for p in params]
    path = os.path.join(ckpt_dir, resumable_name(model_name, epoch_num, step_num))
    extra = {"epoch_num": epoch_num, "step_num": step_num}
    if val_top1 is not None:
        extra["val_top1"] = float(val_top1)
    if len(epoch_losses):
        extra["epoch_losses"] = ms.Tensor(np.asarray(epoch_losses, np.float64))
    return save_checkpoint(entries, path, append_dict=extra)


def _read_entry(path, name):
    """The entry ``name`` of a checkpoint as a numpy array, or None (absent, or the file is unreadable)."""
    try:
        ckpt = read_ckpt(path, names={name})
    except (ValueError, OSError):
        return None
    return ckpt[name].asnumpy() if name in ckpt else None


def read_val_top1(path):
    """The ``val_top1`` a checkpoint was saved with, or None (no validation before it, or unreadable)."""
    value = _read_entry(path, "val_top1")
    return None if value is None else float(value)


def read_epoch_losses(path):
    """The losses of the epoch's steps before a mid-epoch checkpoint, as a list ([] if it holds none)."""
    value = _read_entry(path, "epoch_losses")
    return [] if value is None else [float(v) for v in value.reshape(-1)]


def save_final_checkpoint(path, model, train_step, epoch_num):
    params = list(model.get_parameters()) + train_step.ema_parameters()
    entries = [{"name": p.name, "data": p} for p in params]
    return save_checkpoint(entries, path, append_dict={"epoch_num": epoch_num, "step_num": 0})


def checkpoints_to_keep(found, keep, policy="latest_k", top1=None):
    """The paths of ``found`` (``list_resumable``'s list) a policy keeps: ``latest_k`` the newest ``keep``;
    ``top_k`` the ``keep`` of the best ``top1[path]`` (ties: the older one, as MindCV) plus the newest (the
    resume point); None all of them."""
    paths = [path for _, _, path in found]
    if policy is None:
        return set(paths)
    if policy == "latest_k":
        return set(paths[-keep:])
    if policy != "top_k":
        raise ValueError(f"unknown checkpoint policy {policy!r}")
    top1 = top1 or {}
    ranked = sorted((p for p in paths if top1.get(p) is not None), key=lambda p: -top1[p])  # stable: older first
    return set(ranked[:keep]) | set(paths[-1:])


def prune_checkpoints(ckpt_dir, model_name, keep, protect=(), policy="latest_k", top1=None):
    """Delete the resumable checkpoints of this model that ``policy`` does not keep (:func:`checkpoints_to_keep`),
    never those in ``protect`` (train.py's last known-good checkpoint while a newer one is not yet shown to be
    good). Returns the deleted paths."""
    found = list_resumable(ckpt_dir, model_name)
    kept = {os.path.abspath(p) for p in checkpoints_to_keep(found, keep, policy, top1)}
    kept |= {os.path.abspath(p) for p in protect}
    deleted = []
    for _, _, path in found:
        if os.path.abspath(path) not in kept:
            os.remove(path)
            deleted.append(path)
    return deleted


def load_train_checkpoint(path, model, optimizer, train_step):
    """Restore everything :func:`save_train_checkpoint` wrote; returns ``(epoch_num, step_num)``.

    The model part is strict (a checkpoint of another model or size is a clear error, see
    ``slab_ms.weights.load_checkpoint``); missing optimizer or EMA state is an error too.
    """
    ckpt = read_ckpt(path, model)
    load_parameters(model, ckpt, path)
    for key in ("epoch_num", "step_num"):
        if key not in ckpt:
            raise ValueError(f"'{path}' is not a resumable train.py checkpoint (no '{key}'); to start a new run "
                             "from its weights use --ckpt_file instead of --resume")
    state = _optimizer_state(optimizer, model)
    missing = [p.name for p in state if p.name not in ckpt]
    if missing:
        raise ValueError(f"'{path}' has no state for this optimizer ({len(missing)} entries missing, e.g. "
                         f"{missing[0]}); was it written with another --opt? Use --ckpt_file to start a "
                         "new run from its weights.")
    scale_state = train_step.state_parameters()
    missing = [p.name for p in scale_state if p.name not in ckpt]
    if missing:
        raise ValueError(f"'{path}' holds no loss-scale state ({', '.join(missing)}) but this run has "
                         "loss_scale_type dynamic or drop_overflow_update True; resume with the recipe it was written "
                         "with")
    ema = train_step.ema_parameters()
    if ema and any(p.name not in ckpt for p in ema):
        raise ValueError(f"'{path}' holds no EMA weights but this run has ema=True; resume with the recipe it "
                         "was written with")
    for p in state + ema + scale_state:
        if tuple(ckpt[p.name].shape) != tuple(p.shape):
            raise ValueError(f"'{path}': '{p.name}' has shape {tuple(ckpt[p.name].shape)}, this run {tuple(p.shape)}")
        p.set_data(ckpt[p.name])  # resume happens before the train graph is compiled
    return int(ckpt["epoch_num"].asnumpy()), int(ckpt["step_num"].asnumpy())
