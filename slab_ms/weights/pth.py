"""PyTorch ``.pth`` files read without torch: the zip archive, its pickle and its tensor storages.

``torch.save`` (torch >= 1.6) writes a zip with ``<prefix>/data.pkl`` (the pickled object, tensors as
persistent ids) and ``<prefix>/data/<key>`` (each storage's raw little-endian bytes). Tensors are rebuilt
as numpy arrays; any other object of a training checkpoint (args, config) becomes an inert stand-in.
"""
import pickle
import zipfile
from collections import OrderedDict

import numpy as np

__all__ = ["read_pth"]

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


def read_pth(path):
    """The object a zip-format ``torch.save`` wrote to ``path``, tensors as numpy arrays."""
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
