"""Official PyTorch SLAB checkpoints -> MindSpore parameters (a generic walker: it imports no family).

Accepts an official ``.pth`` (a dict with ``model`` and maybe ``state_dict_ema``; read without
torch and without running anything its pickle names), a plain state dict, a ``.safetensors`` file
(with the optional ``safetensors`` package) or an ``.npz`` of name -> array (keys starting with ``__``
are skipped). Target parameters are mapped by the type of the MindSpore cell that owns them
(LayerNorm/BatchNorm affines and statistics are renamed, Dense/Conv weights keep their layout).
The mapping is strict: a missing, unexpected or mis-shaped key is one error that lists them.
BatchNorm's ``num_batches_tracked`` is dropped; the family's ``checkpoint_filter(state_dict, model)`` (a
function of the module that defines the model's class, found without importing any family) returns ``(kept,
notes, mismatched)``: it drops what its reference keeps and this code recomputes or never uses, each with a
logged note, and names what contradicts the model. The per-layer PRepBN counters (``warm``, ``iter``,
``total_step``) set the model's one γ schedule. The vision families and the LLaMA (``weights/llama.py``) are
converted by this one skeleton, :func:`convert_state_dict`.
"""
import json
import logging
import math
import os
import re
import sys
import zipfile

import numpy as np
import mindspore as ms
from mindspore import nn

from ..layers.amp import cells_and_names_through_amp
from ..layers.norm import prepbn_layers
from ..layers.prepbn_schedule import PRepBNSchedule
from .guard import Budget, CheckpointBudgetError, check_finite, check_name, short_repr
from .pth import CheckpointFormatError, describe_error, plain_dtype, read_pth
from .strict import backbone_view, is_excluded, load_checked, mismatch_message, resize_position_tables

__all__ = ["read_state_dict", "convert_state_dict", "load_official_checkpoint", "official_names",
           "official_parameters", "match_parameters", "load_converted", "schedule_from_counters", "drop_keys"]

_logger = logging.getLogger(__name__)

_RENAME = {
    nn.Embedding: {"embedding_table": "weight"},
    nn.LayerNorm: {"gamma": "weight", "beta": "bias"},
    nn.BatchNorm1d: {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                     "moving_variance": "running_var"},
    nn.BatchNorm2d: {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                     "moving_variance": "running_var"},
}
_BN_COUNTER = [(r"(^|\.)num_batches_tracked$", "BatchNorm counter, unused by MindSpore")]
# The reference's per-layer PRepBN counters: LN-only warm-up steps, steps left, decay length.
_COUNTERS = re.compile(r"^(.*)\.(warm|iter|total_step)$")
# safetensors dtype names numpy can hold -> item size.
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
                       "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
_MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own limit


def read_state_dict(src, use_ema=False, net=None):
    """Name -> numpy array from an official ``.pth``, a ``.safetensors``, an ``.npz`` or an in-memory dict.

    A file that cannot be read is one :class:`CheckpointFormatError` (a ValueError) naming it; a ``.pth``
    whose pickle asks to run code is refused without running it (``weights/pth.py``). What a file takes once
    read counts against the memory budget of ``weights/guard.py`` (``net``: the model it is read for) before
    it is allocated, and NaN / inf values are refused naming the tensor.
    """
    where = "the state dict"
    if isinstance(src, (str, os.PathLike)):
        src = where = os.fspath(src)
        if not os.path.isfile(src):
            raise FileNotFoundError(f"Checkpoint file not found: '{src}'.")
        if src.endswith(".npz"):
            return _finite(_read_npz(src, Budget(src, net)), src)
        if src.endswith(".safetensors"):
            return _finite(_read_safetensors(src, Budget(src, net)), src)
        obj = read_pth(src, net)
    else:
        obj = src
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"Expected a checkpoint dict, got {type(obj).__name__}.")
    key = "state_dict_ema" if use_ema else "model"
    if use_ema and key not in obj:
        raise ValueError("The checkpoint has no 'state_dict_ema'; convert without EMA.")
    state = obj.get(key, obj)
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"The checkpoint's '{key}' entry is a {type(state).__name__}, not a state dict.")
    return _finite({k: np.asarray(v) for k, v in state.items()
                    if isinstance(k, str) and (isinstance(v, np.ndarray) or np.isscalar(v))}, where)


def _finite(state, where):
    for name, value in state.items():
        check_finite(name, value, where)
    return state


def _npy_members(archive, path, budget):
    """``[(name, member)]`` of an ``.npz``'s arrays, each ``.npy`` header read and checked (plain dtype, its data
    exactly the member's remaining bytes, within ``budget``) before any data is read."""
    members = []
    for info in archive.infolist():
        name = info.filename[:-len(".npy")] if info.filename.endswith(".npy") else info.filename
        if name.startswith("__"):
            continue
        check_name(name, path, CheckpointFormatError)
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise CheckpointFormatError(f"'{path}': array '{name}' has the .npy format version {version}, not "
                                            "1.0 or 2.0")
            shape, _, dtype = read_header(f)
            header = f.tell()
        try:
            plain_dtype(dtype)
        except CheckpointFormatError as err:
            raise CheckpointFormatError(f"'{path}': array '{name}': {err}") from None
        if any(type(d) is not int or d < 0 for d in shape):
            raise CheckpointFormatError(f"'{path}': array '{name}' has the shape {short_repr(shape)}")
        nbytes = math.prod(shape) * dtype.itemsize
        if header + nbytes != info.file_size:
            raise CheckpointFormatError(f"'{path}': array '{name}' of shape {short_repr(shape)} and dtype {dtype} "
                                        f"needs {nbytes} bytes, its member holds {info.file_size - header}")
        budget.take(nbytes, f"array '{name}' of shape {short_repr(shape)}")
        members.append((name, info))
    return members


def _read_npz(path, budget):
    if not zipfile.is_zipfile(path):
        raise CheckpointFormatError(f"'{path}' is not an .npz archive (numpy.savez writes a zip file; this one is "
                                    "not a zip, or it is truncated).")
    try:
        with zipfile.ZipFile(path) as archive:
            members = _npy_members(archive, path, budget)
            out = {}
            for name, info in members:
                with archive.open(info) as f:
                    out[name] = np.lib.format.read_array(f, allow_pickle=False)
            return out
    except (CheckpointFormatError, CheckpointBudgetError):
        raise
    except Exception as err:  # zipfile / zlib / numpy format errors for a damaged archive
        raise CheckpointFormatError(f"'{path}' is not a readable .npz archive of arrays "
                                    f"({describe_error(err)}).") from None


def _check_safetensors_header(path, budget):
    """Every entry of a ``.safetensors`` header (name, dtype, shape, byte range) checked and counted against
    ``budget`` before any tensor data is read."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little") if size >= 8 else 0
        if not 0 < length <= min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise CheckpointFormatError(f"'{path}' is not a readable .safetensors file (a header of {length} bytes "
                                        f"in a file of {size})")
        budget.take(length, "its header")
        try:
            header = json.loads(f.read(length))
        except (ValueError, RecursionError) as err:
            raise CheckpointFormatError(f"'{path}' is not a readable .safetensors file (its header is no JSON: "
                                        f"{describe_error(err)})") from None
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"'{path}' is not a readable .safetensors file (its header is no JSON object)")
    data_bytes = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        check_name(name, path, CheckpointFormatError)
        entry = entry if isinstance(entry, dict) else {}
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if (dtype not in _SAFETENSORS_DTYPES or not isinstance(shape, list) or len(shape) > 32
                or any(type(d) is not int or d < 0 for d in shape) or not isinstance(offsets, list)
                or len(offsets) != 2 or any(type(o) is not int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise CheckpointFormatError(f"'{path}': tensor '{name}' has the header entry {short_repr(entry)}: not a "
                                        f"dtype of {', '.join(_SAFETENSORS_DTYPES)}, a shape and a byte range within "
                                        f"the file's {data_bytes} data bytes")
        nbytes = math.prod(shape) * np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
        if nbytes != offsets[1] - offsets[0]:
            raise CheckpointFormatError(f"'{path}': tensor '{name}' of shape {short_repr(shape)} and dtype {dtype} "
                                        f"needs {nbytes} bytes, its byte range holds {offsets[1] - offsets[0]}")
        budget.take(nbytes, f"tensor '{name}' of shape {short_repr(shape)}")


def _read_safetensors(path, budget):
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise CheckpointFormatError(f"reading '{path}' needs the safetensors package: pip install safetensors "
                                    "(or pip install slab-ms[safetensors])") from None
    _check_safetensors_header(path, budget)
    try:
        return dict(load_file(path))
    except Exception as err:  # SafetensorError for what the header check cannot see (overlapping ranges ...)
        raise CheckpointFormatError(f"'{path}' is not a readable .safetensors file ({describe_error(err)}).") from None


# -------------------------------------------------------------------------------------- conversion
def drop_keys(state_dict, patterns):
    """Split an official state dict by ``[(regex, reason)]``: returns ``(kept, notes)``, one note per reason
    naming the dropped keys (for a family's ``checkpoint_filter``)."""
    kept, dropped = {}, {}
    for key, value in state_dict.items():
        reason = next((why for pattern, why in patterns if re.search(pattern, key)), None)
        if reason is None:
            kept[key] = value
        else:
            dropped.setdefault(reason, []).append(key)
    notes = [f"dropped {len(keys)} key(s), {why}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
             for why, keys in dropped.items()]
    return kept, notes


def _family_filter(net):
    """``checkpoint_filter`` of the module that defines ``net``'s class, or None."""
    return getattr(sys.modules.get(type(net).__module__), "checkpoint_filter", None)


def official_names(net):
    """MindSpore parameter name -> the name the reference gives it (the γ schedule has none)."""
    return {name: official for name, (official, _) in official_parameters(net).items()}


def official_parameters(net):
    """MindSpore parameter name -> (expected official name, Parameter), skipping the γ schedule."""
    own = PRepBNSchedule.of(net)
    schedule = own.ids() if own else set()
    targets = {}
    for cell_name, cell in cells_and_names_through_amp(net):
        rename = next((r for t, r in _RENAME.items() if isinstance(cell, t)), {})
        prefix = f"{cell_name}." if cell_name else ""
        for pname, param in cell._params.items():  # pylint: disable=protected-access
            if id(param) in schedule:
                continue
            targets[prefix + pname] = (prefix + rename.get(pname, pname), param)
    return targets


def schedule_from_counters(state):
    """The reference's per-layer counters -> (step, decay_steps, warmup_steps) of one schedule."""
    layers = {}
    for key, value in state.items():
        match = _COUNTERS.match(key)
        if match:
            value = np.asarray(value)
            if value.size != 1 or value.dtype.kind not in "iu":
                raise CheckpointFormatError(f"PRepBN counter '{key}' is not one integer (shape {value.shape}, "
                                            f"{value.dtype}): a damaged or foreign checkpoint")
            layers.setdefault(match.group(1), {})[match.group(2)] = int(value.reshape(()))
    if not layers:
        return None, []
    incomplete = sorted(name for name, counters in layers.items() if not {"iter", "total_step"} <= set(counters))
    if incomplete:
        raise CheckpointFormatError(f"PRepBN counters incomplete (each layer has iter and total_step) in "
                                    f"{', '.join(incomplete[:5])}: a damaged or foreign checkpoint")
    totals = {v.get("total_step") for v in layers.values()}
    iters = {v.get("iter") for v in layers.values()}
    warms = {v.get("warm", 0) for v in layers.values()}
    notes = []
    if len(totals) > 1 or len(iters) > 1 or len(warms) > 1:
        notes.append(f"PRepBN counters differ between layers (total_step {sorted(totals)}, iter {sorted(iters)},"
                     f" warm {sorted(warms)}); using the most advanced one.")
    total, it, warm = max(totals), min(iters), min(warms)
    if warm > 0:  # still in LayerNorm warm-up: `warm` more steps of LN, then the whole decay
        return (0, total, warm), notes
    return (total - it, total, 0), notes


def match_parameters(targets, state_dict):
    """Take each target's value from ``state_dict``: returns ``(params, used, missing, mismatched)`` with
    MindSpore name -> new Parameter, the source keys read, the absent ones and the mis-shaped ones."""
    used, missing, mismatched, params = set(), [], [], {}
    for ms_name, (src_name, param) in targets.items():
        if src_name not in state_dict:
            missing.append(src_name)
            continue
        value = np.asarray(state_dict[src_name])
        used.add(src_name)
        if tuple(value.shape) != tuple(param.shape):
            mismatched.append(f"{src_name}: source {tuple(value.shape)} vs model {tuple(param.shape)}")
            continue
        params[ms_name] = ms.Parameter(ms.Tensor(value, dtype=param.dtype), name=ms_name)
    return params, used, missing, mismatched


def load_converted(net, params, schedule, notes):
    """Write what a converter returned into ``net``: log the notes, load the parameters strictly, set the γ
    schedule."""
    for note in notes:
        _logger.info(note)
    load_checked(net, params)
    if schedule is not None:
        PRepBNSchedule.require(net).set(*schedule)
    return net


def convert_state_dict(net, state_dict, exclude=(), headline=None):
    """Map an official state dict onto ``net``; parameters under the cell names in ``exclude`` are left out
    (a backbone skips the classifier's head and final norm and keeps its output norms: ``strict.backbone_view``).

    Returns ``(params, schedule, notes)``: MindSpore name -> Parameter, the (step, decay_steps,
    warmup_steps) schedule or None, and the notes on what was dropped. Raises ValueError listing
    every missing, unexpected and mis-shaped key, under ``headline`` (default: names the model class).
    """
    classifier, exclude = backbone_view(net, state_dict, exclude)
    state_dict = {k: v for k, v in state_dict.items() if k not in classifier}
    targets = official_parameters(net)
    skipped = {src for ms_name, (src, _) in targets.items() if is_excluded(ms_name, exclude)}
    targets = {k: v for k, v in targets.items() if not is_excluded(k, exclude)}
    state_dict, dropped = drop_keys({k: v for k, v in state_dict.items() if k not in skipped}, _BN_COUNTER)
    mismatched = []
    family_filter = _family_filter(net)
    if family_filter is not None:
        state_dict, family_notes, mismatched = family_filter(state_dict, net)
        dropped += family_notes
    state_dict = resize_position_tables(state_dict, {src: tuple(param.shape) for src, param in targets.values()})
    params, used, missing, more_mismatched = match_parameters(targets, state_dict)
    mismatched = mismatched + more_mismatched
    has_prepbn = bool(prepbn_layers(net))
    schedule, notes = schedule_from_counters(state_dict) if has_prepbn else (None, [])
    unexpected = [key for key in state_dict if key not in used and not (has_prepbn and _COUNTERS.match(key))]
    if has_prepbn and schedule is None:
        missing.append("<PRepBN counters: *.iter, *.total_step>")
    if missing or unexpected or mismatched:
        headline = headline or (f"The official checkpoint does not fit {type(net).__name__} (another model, size or "
                                "number of classes?)")
        raise ValueError(mismatch_message(headline, missing, unexpected, mismatched))
    return params, schedule, notes + dropped


def load_official_checkpoint(net, src, use_ema=False, exclude=()):
    """Load an official PyTorch checkpoint (path or dict, see module doc) into ``net`` strictly; parameters
    under the cell names in ``exclude`` (e.g. ``("head",)``) keep their initial values."""
    return load_converted(net, *convert_state_dict(net, read_state_dict(src, use_ema=use_ema, net=net),
                                                   exclude=exclude))
