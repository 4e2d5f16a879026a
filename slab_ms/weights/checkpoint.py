"""MindSpore ``.ckpt`` files: the strict loader (which also takes an official ``.pth`` / ``.npz``) and the
atomic writer."""
import os

import mindspore as ms

from ..layers.amp import parameters_and_names_through_amp, unwrap_amp
from ..utils import atomic_output
from .official import load_official_checkpoint, read_state_dict
from .strict import backbone_view, is_excluded, load_checked, mismatch_message, resize_position_tables

__all__ = ["load_checkpoint", "save_checkpoint", "checkpoint_num_classes", "UnreadableCheckpointError"]

# Scalars a MindSpore training checkpoint carries next to the weights (train.py's loss-scale state is
# ``train_step.*``).
_TRAIN_STATE_KEYS = ("global_step", "learning_rate", "beta1_power", "beta2_power", "scale_sense",
                     "current_iterator_step", "last_overflow_iterator_step", "epoch_num", "step_num", "val_top1",
                     "epoch_losses")


class UnreadableCheckpointError(ValueError):
    """A ``.ckpt`` MindSpore cannot read (torn, truncated or another format)."""


def load_checkpoint(net, path, ema=False, exclude=()):
    """Load a MindSpore ``.ckpt`` (or an official ``.pth`` / ``.npz``) into ``net``, strictly.

    Missing parameters, shape mismatches and unknown model parameters are one error that lists them.
    Optimizer slots and training scalars saved by ``train.py`` are ignored. ``ema=True`` loads the
    ``ema.*`` copy of the weights. A network under AMP (MindSpore's or MindCV's wrappers) loads the names
    of the plain network. Parameters under the cell names in ``exclude`` (e.g. ``("head",)``
    to fine-tune on another number of classes) keep their initial values and are not read. A backbone
    (``features_only=True``) also takes its classifier's checkpoint (``strict.backbone_view``).
    """
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: '{path}'. Pass the path of a .ckpt written by "
                                f"train.py / slab_ms.convert, or of an official .pth.")
    model = unwrap_amp(net)
    if path.endswith((".pth", ".pt", ".npz", ".safetensors")):
        load_official_checkpoint(model, path, use_ema=ema, exclude=exclude)
        return net
    try:
        ckpt = ms.load_checkpoint(path)
    except Exception as err:  # the loader raises several types for foreign or torn files
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        hint = (" It is a zip file: an official PyTorch checkpoint must end in .pth." if zipped else
                " It may be truncated (a copy or a write that did not finish).")
        raise UnreadableCheckpointError(f"'{path}' is not a readable MindSpore checkpoint "
                                        f"({' '.join(str(err).split())[:300]}).{hint}") from None
    if ema:
        ckpt = {k[len("ema."):]: v for k, v in ckpt.items() if k.startswith("ema.")}
        if not ckpt:
            raise ValueError(f"'{path}' holds no EMA weights (no 'ema.*' entries); load it with ema=False.")
    skip, exclude = backbone_view(model, ckpt, exclude)
    ckpt = {k: v for k, v in ckpt.items() if k not in skip}
    every = dict(parameters_and_names_through_amp(model))
    own = {n: p for n, p in every.items() if not is_excluded(n, exclude)}
    ckpt = {k: v for k, v in ckpt.items() if not is_excluded(k, exclude)}
    ckpt = resize_position_tables(ckpt, {n: tuple(p.shape) for n, p in own.items()})
    missing = sorted(n for n in own if n not in ckpt)
    mismatched = sorted(f"{n}: checkpoint {tuple(ckpt[n].shape)} vs model {tuple(p.shape)}"
                        for n, p in own.items() if n in ckpt and tuple(ckpt[n].shape) != tuple(p.shape))
    unexpected = sorted(k for k in ckpt if k not in every and not _is_train_state(k, every))
    if missing or mismatched or unexpected:
        raise ValueError(mismatch_message(f"Checkpoint '{path}' does not fit {type(model).__name__}: is it for another "
                                          "model or another size?" + _head_hint(mismatched), missing, unexpected,
                                          mismatched))
    load_checked(net, {k: ckpt[k] if isinstance(ckpt[k], ms.Parameter) else ms.Parameter(ms.Tensor(ckpt[k]), name=k)
                       for k in own})  # a resized position table is an array
    return net


def checkpoint_num_classes(src, default=1000):
    """Rows of the classifier's ``head.weight`` in ``src`` (a MindSpore ``.ckpt``, an official checkpoint file or a
    state dict); ``default`` for a checkpoint without one."""
    if isinstance(src, dict):
        head = src.get("head.weight")
    elif src.endswith(".ckpt"):
        try:
            head = ms.load_checkpoint(src, choice_func=lambda name: name == "head.weight").get("head.weight")
        except (ValueError, RuntimeError) as err:
            raise UnreadableCheckpointError(f"'{src}' is not a readable MindSpore checkpoint ({err}).") from err
    else:
        head = read_state_dict(src).get("head.weight")
    return int(head.shape[0]) if head is not None else default


def _head_hint(mismatched):
    if mismatched and all(m.startswith("head.") for m in mismatched):
        return (" Only the classifier differs: to fine-tune on another number of classes, leave it out "
                "(create_model(..., checkpoint_exclude=('head',)); train.py --ckpt_exclude head).")
    return ""


def _is_train_state(key, own):
    if key in _TRAIN_STATE_KEYS or key.startswith(("ema.", "train_step.")):
        return True
    slot = key.split(".", 1)
    return len(slot) == 2 and slot[1] in own  # optimizer slot such as adam_m.<param>


def save_checkpoint(save_obj, path, append_dict=None, overwrite=True):
    """``mindspore.save_checkpoint`` written atomically (temporary file in the same folder, then renamed;
    ``overwrite=False``: only if no file has the name by then, see ``utils.atomic_output``)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_output(path, suffix=".ckpt", overwrite=overwrite) as tmp:
        ms.save_checkpoint(save_obj, tmp, append_dict=append_dict)
    return path
