"""Official PyTorch SLAB checkpoints -> MindSpore.

    python -m slab_ms.convert --model slab_deit_tiny --src slab_deit_tiny.pth --dst slab_deit_tiny.ckpt

Accepts an official ``.pth`` (a dict with ``model`` and maybe ``state_dict_ema``; read without
torch), a plain state dict, or an ``.npz`` of name -> array (keys starting with ``__`` are
skipped). Target parameters are mapped by the type of the MindSpore cell that owns them
(LayerNorm/BatchNorm affines and statistics are renamed, Dense/Conv weights keep their layout).
The mapping is strict: a missing, unexpected or mis-shaped key is one error that lists them.
Buffers that are recomputed (``relative_position_index``, ``attn_mask``) or meaningless here
(``num_batches_tracked``) and the reference's dead parameters are dropped with a logged note; the
per-layer PRepBN counters (``warm``, ``iter``, ``total_step``) set the model's one γ schedule.
"""
import argparse
import json
import logging
import os
import pickle
import re
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import mindspore as ms
from mindspore import nn

from .layers.norm import PRepBN, set_prepbn_schedule
from .utils import mismatch_message

__all__ = ["read_state_dict", "convert_state_dict", "load_official_checkpoint", "main"]

_logger = logging.getLogger(__name__)

_RENAME = {
    nn.LayerNorm: {"gamma": "weight", "beta": "bias"},
    nn.BatchNorm1d: {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                     "moving_variance": "running_var"},
    nn.BatchNorm2d: {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                     "moving_variance": "running_var"},
}
# Source keys consumed or dropped on purpose, with the reason logged.
_DROPPED = [
    (re.compile(r"(^|\.)num_batches_tracked$"), "BatchNorm counter, unused by MindSpore"),
    (re.compile(r"(^|\.)relative_position_index$"), "recomputed by the model"),
    (re.compile(r"(^|\.)attn_mask$"), "recomputed by the model"),
    (re.compile(r"^cls_token$"), "dead parameter of SLAB-DeiT (no class token is used)"),
    (re.compile(r"(^|\.)attns\.\d+\.scale$"), "dead parameter of SLAB-CSwin's SLA"),
]
_SCHEDULE = re.compile(r"^(.*)\.(warm|iter|total_step)$")


# ----------------------------------------------------------------------------------------- reading
_TORCH_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.name = name


class _Opaque:
    """Stands in for any non-tensor object of a training checkpoint (config, args, ...)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Opaque()


def _rebuild_tensor(storage, offset, size, stride, *args):
    size, stride = tuple(size), tuple(stride)
    if not size:
        return storage[offset].copy()
    flat = storage[offset:]
    return np.lib.stride_tricks.as_strided(flat, shape=size, strides=[s * flat.itemsize for s in stride]).copy()


class _TorchUnpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix):
        super().__init__(file)
        self._archive, self._prefix = archive, prefix

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *args: data
        if module == "torch" and name in _TORCH_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module in ("builtins", "_codecs", "copyreg"):
            return super().find_class(module, name)
        return _Opaque

    def persistent_load(self, pid):
        _, storage_type, key, _, _ = pid
        raw = self._archive.read(f"{self._prefix}data/{key}")
        dtype = _TORCH_DTYPES[storage_type.name]
        if dtype == "bfloat16":
            return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(raw, dtype)


def _read_pth(path):
    if not zipfile.is_zipfile(path):
        raise ValueError(f"'{path}' is not a zip-format PyTorch checkpoint (torch >= 1.6). Re-save it with "
                         f"torch.save(torch.load(path), path) and convert again.")
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if not pkl:
            raise ValueError(f"'{path}' is a zip file but not a PyTorch checkpoint (no data.pkl).")
        prefix = pkl[0][: -len("data.pkl")]
        with archive.open(pkl[0]) as f:
            return _TorchUnpickler(f, archive, prefix).load()


def read_state_dict(src, use_ema=False):
    """Name -> numpy array from an official ``.pth``, an ``.npz`` or an in-memory dict."""
    if isinstance(src, (str, os.PathLike)):
        src = os.fspath(src)
        if not os.path.isfile(src):
            raise FileNotFoundError(f"Checkpoint file not found: '{src}'.")
        if src.endswith(".npz"):
            with np.load(src, allow_pickle=False) as data:
                return {k: data[k] for k in data.files if not k.startswith("__")}
        obj = _read_pth(src)
    else:
        obj = src
    if not isinstance(obj, dict):
        raise ValueError(f"Expected a checkpoint dict, got {type(obj).__name__}.")
    key = "state_dict_ema" if use_ema else "model"
    if use_ema and key not in obj:
        raise ValueError("The checkpoint has no 'state_dict_ema'; convert without EMA.")
    state = obj.get(key, obj)
    return {k: np.asarray(v) for k, v in state.items() if isinstance(v, np.ndarray) or np.isscalar(v)}


# -------------------------------------------------------------------------------------- conversion
def _target_params(net):
    """MindSpore parameter name -> (expected official name, Parameter), skipping the γ schedule."""
    schedule = {id(getattr(net, n)) for n in ("prepbn_step", "prepbn_decay_steps", "prepbn_warmup_steps")
                if hasattr(net, n)}
    targets = {}
    for cell_name, cell in net.cells_and_names():
        rename = next((r for t, r in _RENAME.items() if isinstance(cell, t)), {})
        prefix = f"{cell_name}." if cell_name else ""
        for pname, param in cell._params.items():  # pylint: disable=protected-access
            if id(param) in schedule:
                continue
            targets[prefix + pname] = (prefix + rename.get(pname, pname), param)
    return targets


def _schedule_from(state):
    """The reference's per-layer counters -> (step, decay_steps, warmup_steps) of one schedule."""
    layers = {}
    for key, value in state.items():
        match = _SCHEDULE.match(key)
        if match:
            layers.setdefault(match.group(1), {})[match.group(2)] = int(np.asarray(value))
    if not layers:
        return None, []
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


def convert_state_dict(net, state_dict, exclude=()):
    """Map an official state dict onto ``net``; parameters under the cell names in ``exclude`` are left out.

    Returns ``(params, schedule, notes)``: MindSpore name -> Parameter, the (step, decay_steps,
    warmup_steps) schedule or None, and the notes on what was dropped. Raises ValueError listing
    every missing, unexpected and mis-shaped key.
    """
    from .models._factory import is_excluded
    targets = _target_params(net)
    skipped = {src for ms_name, (src, _) in targets.items() if is_excluded(ms_name, exclude)}
    targets = {k: v for k, v in targets.items() if not is_excluded(k, exclude)}
    state_dict = {k: v for k, v in state_dict.items() if k not in skipped}
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
        params[ms_name] = ms.Parameter(ms.Tensor(value.astype(ms.dtype_to_nptype(param.dtype))), name=ms_name)
    has_prepbn = any(isinstance(c, PRepBN) for _, c in net.cells_and_names())
    schedule, notes = _schedule_from(state_dict) if has_prepbn else (None, [])
    unexpected, dropped = [], {}
    for key in state_dict:
        if key in used:
            continue
        if has_prepbn and _SCHEDULE.match(key):
            continue
        reason = next((why for pattern, why in _DROPPED if pattern.search(key)), None)
        if reason is None:
            unexpected.append(key)
        else:
            dropped.setdefault(reason, []).append(key)
    if has_prepbn and schedule is None:
        missing.append("<PRepBN counters: *.iter, *.total_step>")
    if missing or unexpected or mismatched:
        raise ValueError(mismatch_message(f"The official checkpoint does not fit {type(net).__name__} (another model, "
                                           "size or number of classes?)", missing, unexpected, mismatched))
    notes += [f"dropped {len(keys)} key(s), {why}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
              for why, keys in dropped.items()]
    return params, schedule, notes


def load_official_checkpoint(net, src, use_ema=False, exclude=()):
    """Load an official PyTorch checkpoint (path or dict, see module doc) into ``net`` strictly; parameters
    under the cell names in ``exclude`` (e.g. ``("head",)``) keep their initial values."""
    params, schedule, notes = convert_state_dict(net, read_state_dict(src, use_ema=use_ema), exclude=exclude)
    for note in notes:
        _logger.info(note)
    ms.load_param_into_net(net, params, strict_load=True)
    if schedule is not None:
        set_prepbn_schedule(net, step=schedule[0], decay_steps=schedule[1], warmup_steps=schedule[2])
    return net


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert an official PyTorch SLAB checkpoint to MindSpore.")
    parser.add_argument("--model", required=True, help="registered model name, e.g. slab_deit_tiny")
    parser.add_argument("--src", required=True, help="official .pth (or .npz) file")
    parser.add_argument("--dst", required=True, help="output .ckpt file")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--model-kwargs", default="{}", help="JSON dict of extra model kwargs")
    parser.add_argument("--ema", action="store_true", help="convert 'state_dict_ema' instead of 'model'")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import mindcv
    from . import list_models
    if args.model not in list_models():
        parser.error(f"unknown model '{args.model}'; choose one of {', '.join(list_models())}")
    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as err:
        parser.error(f"--model-kwargs is not valid JSON: {err}")
    net = mindcv.create_model(args.model, num_classes=args.num_classes, **kwargs)
    try:
        load_official_checkpoint(net, args.src, use_ema=args.ema)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from .utils import save_checkpoint_atomic
    save_checkpoint_atomic(net, args.dst)
    print(f"wrote {args.dst} ({sum(p.size for p in net.get_parameters()):,} values)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
