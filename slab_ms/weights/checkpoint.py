"""MindSpore ``.ckpt`` files: the checked reader, the strict loader (which also takes an official ``.pth`` /
``.npz``) and the atomic writer.

MindSpore's own loader converts a record's bytes to the shape the record states without comparing the two, so
a crafted file corrupts the heap. :func:`read_ckpt` parses the file with MindSpore's protobuf schema and checks
every record (known type, non-negative dims, elements x item size = bytes, names, the memory budget and finite
values of ``weights/guard.py``) before it builds a tensor; nothing else in the package reads a ``.ckpt``.
"""
import binascii
import math
import os

import numpy as np
import mindspore as ms
from google.protobuf.message import DecodeError
from mindspore.train.checkpoint_pb2 import Checkpoint

from ..layers.amp import parameters_and_names_through_amp, unwrap_amp
from ..utils import atomic_output
from .guard import Budget, check_finite, check_name, short_repr
from .official import load_official_checkpoint, read_state_dict
from .strict import backbone_view, is_excluded, load_checked, mismatch_message, resize_position_tables

__all__ = ["read_ckpt", "load_checkpoint", "load_parameters", "save_checkpoint", "checkpoint_num_classes",
           "UnreadableCheckpointError"]

# Scalars a MindSpore training checkpoint carries next to the weights (train.py's loss-scale state is
# ``train_step.*``).
_TRAIN_STATE_KEYS = ("global_step", "learning_rate", "beta1_power", "beta2_power", "scale_sense",
                     "current_iterator_step", "last_overflow_iterator_step", "epoch_num", "step_num", "val_top1",
                     "epoch_losses")
# MindSpore's tensor type names -> numpy dtype; BFloat16 is read as its bit pattern and widened to float32, "str"
# (an ``append_dict`` text) is UTF-32.
_CKPT_DTYPES = {
    "Int8": np.int8, "UInt8": np.uint8, "Int16": np.int16, "UInt16": np.uint16, "Int32": np.int32,
    "UInt32": np.uint32, "Int64": np.int64, "UInt64": np.uint64, "Float16": np.float16, "Float32": np.float32,
    "Float64": np.float64, "Bool": np.bool_, "BFloat16": np.uint16, "str": np.dtype("<U1"),
}
_MAX_DIMS = 32  # numpy's limit
# ``save_checkpoint(..., crc_check=True)`` appends b"crc_num" and the CRC-32 of the records in 10 bytes.
_CRC_MARK, _CRC_TRAILER = b"crc_num", 17


class UnreadableCheckpointError(ValueError):
    """A ``.ckpt`` that cannot be read: torn, truncated, another format, or records that contradict themselves."""


def _unreadable(path, data, reason):
    hint = (" It is a zip file: an official PyTorch checkpoint must end in .pth." if data[:4] == b"PK\x03\x04" else
            " It may be truncated (a copy or a write that did not finish) or crafted.")
    return UnreadableCheckpointError(f"'{path}' is not a readable MindSpore checkpoint ({reason}).{hint}")


def _records(path, data):
    """``{name: (dims, type, [byte chunks])}`` of the parsed file (a large tensor is consecutive slices of one
    name); every record checked against its bytes."""
    if len(data) >= _CRC_TRAILER and data[-_CRC_TRAILER:-10] == _CRC_MARK:
        data, crc = data[:-_CRC_TRAILER], int.from_bytes(data[-10:], "big")
        if binascii.crc32(data) != crc:
            raise _unreadable(path, data, "its CRC-32 does not match its records")
    proto = Checkpoint()
    try:
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise _unreadable(path, data, f"not a MindSpore checkpoint protobuf: {' '.join(str(err).split())[:200]}") \
            from None
    records, last = {}, None
    for value in proto.value:
        name = check_name(value.tag, path, UnreadableCheckpointError)
        if value.WhichOneof("value") != "tensor":
            raise _unreadable(path, data, f"entry '{name}' is not a tensor (map tensors are not read here)")
        dims, kind = list(value.tensor.dims), value.tensor.tensor_type
        if name == last:
            if (dims, kind) != records[name][:2]:
                raise _unreadable(path, data, f"the slices of tensor '{name}' disagree on its shape or type")
            records[name][2].append(value.tensor.tensor_content)
            continue
        if name in records:
            raise _unreadable(path, data, f"tensor '{name}' appears twice")
        records[name], last = (dims, kind, [value.tensor.tensor_content]), name
    if not records:
        raise _unreadable(path, data, "it holds no tensors")
    for name, (dims, kind, chunks) in records.items():
        records[name] = (_checked_shape(path, data, name, dims, kind, sum(map(len, chunks))), kind, chunks)
    return records


def _checked_shape(path, data, name, dims, kind, nbytes):
    """The shape of a record whose dims, type and byte count agree; else UnreadableCheckpointError."""
    dtype = _CKPT_DTYPES.get(kind)
    if dtype is None:
        raise _unreadable(path, data, f"tensor '{name}' has the unknown type {short_repr(kind)}")
    if len(dims) > _MAX_DIMS or any(d < 0 for d in dims):
        raise _unreadable(path, data, f"tensor '{name}' has the dims {short_repr(tuple(dims))}: not up to "
                                      f"{_MAX_DIMS} non-negative sizes")
    itemsize = np.dtype(dtype).itemsize
    if kind == "str":
        if nbytes % itemsize:
            raise _unreadable(path, data, f"text entry '{name}' has {nbytes} bytes, not a whole number of characters")
        return (nbytes // itemsize,)
    shape = () if dims == [0] and nbytes == itemsize else tuple(dims)  # MindSpore also writes a scalar as [0]
    if math.prod(shape) * itemsize != nbytes:
        raise _unreadable(path, data, f"tensor '{name}' of shape {short_repr(shape)} and type {kind} needs "
                                      f"{math.prod(shape) * itemsize} bytes, the file holds {nbytes}")
    return shape


def _build(name, shape, kind, chunks, path):
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if kind == "str":
        return str(np.frombuffer(raw, f"<U{shape[0]}")[0]) if shape[0] else ""
    array = np.frombuffer(raw, _CKPT_DTYPES[kind]).reshape(shape)
    if kind == "BFloat16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    check_finite(name, array, path)
    tensor = ms.Tensor(array, ms.bfloat16) if kind == "BFloat16" else ms.Tensor(array)
    return ms.Parameter(tensor, name=name)


def read_ckpt(path, net=None, names=None):
    """``{name: Parameter}`` (a ``str`` for a text entry) of a MindSpore ``.ckpt``, as ``mindspore.load_checkpoint``
    returns it, with every record checked before any tensor is built (module doc). ``net``: the model it is read
    for (sets the memory budget); ``names``: the entries to build (all are checked).

    Raises UnreadableCheckpointError (damaged or crafted file), guard.CheckpointBudgetError (larger than the
    budget: not read) and guard.NonFiniteCheckpointError (NaN / inf in a built tensor).
    """
    size = os.path.getsize(path)
    Budget(path, net).take(size, f"its {size} bytes")  # every tensor's bytes are in the file
    with open(path, "rb") as f:
        data = f.read()
    records = _records(path, data)
    return {name: _build(name, shape, kind, chunks, path) for name, (shape, kind, chunks) in records.items()
            if names is None or name in names}


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
    return load_parameters(net, read_ckpt(path, model), path, ema=ema, exclude=exclude)


def load_parameters(net, ckpt, path, ema=False, exclude=()):
    """:func:`load_checkpoint` of what :func:`read_ckpt` returned for ``path``."""
    model = unwrap_amp(net)
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
    mismatched = sorted(f"{n}: checkpoint {_shape(ckpt[n])} vs model {tuple(p.shape)}"
                        for n, p in own.items() if n in ckpt and _shape(ckpt[n]) != tuple(p.shape))
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
        head = read_ckpt(src, names={"head.weight"}).get("head.weight")
    else:
        head = read_state_dict(src).get("head.weight")
    return int(head.shape[0]) if head is not None else default


def _shape(value):
    return "text" if isinstance(value, str) else tuple(value.shape)


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
