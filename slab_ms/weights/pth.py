"""PyTorch ``.pth`` files read without torch, and without running anything the file asks for.

``torch.save`` (torch >= 1.6) writes a zip with ``<prefix>/data.pkl`` (the pickled object, tensors as
persistent ids) and ``<prefix>/data/<key>`` (each storage's raw little-endian bytes). Tensors are rebuilt
as numpy arrays.

A pickle is a small program: unpickling may call any function it names (``builtins.eval``, ``os.system``,
...). The reader below is an allow-list interpreter (Python's own opcode loop with every opcode that calls,
constructs or mutates replaced):

* A call (REDUCE) may only call what a state dict needs: torch's tensor / parameter rebuild functions,
  ``collections.OrderedDict``, ``torch.Size``, numpy scalars / dtypes / arrays of plain numbers, ``set`` /
  ``frozenset`` / ``complex`` / ``slice`` and ``_codecs.encode`` (how protocol 2 stores bytes), each replaced
  by a local function that checks its arguments. Calling anything else is refused with one error naming the
  global (a protocol-2 ``__builtin__`` name is mapped to ``builtins`` first, as Python's unpickler does).
* Globals of ``builtins`` and of the standard modules that reach the system (``os``, ``subprocess``,
  ``importlib``, ``operator`` ...) are refused as soon as they are named, even without a call.
* A dict key is text, a number, bytes or None; a set holds only those: no container is ever hashed (a crafted
  tuple DAG would take exponential time, a deeply nested one the C stack), and no check walks a container.
* Any other class of a training checkpoint (``argparse.Namespace``, a config node ...) that the pickle
  instantiates without a call (NEWOBJ, protocol 2+) becomes an inert stand-in: it keeps the pickled state
  as data, has no methods the pickle can reach and its class is never called, imported or looked up.
* BUILD (``__setstate__`` / attribute updates) is only applied to stand-ins and to the rebuilt numpy arrays;
  extension codes and protocol-0/1 instantiation (INST / OBJ) are refused.

Every problem with the file (not a zip, truncated, bad pickle, missing or short storage, refused global) is
one :class:`CheckpointFormatError`, a ValueError whose message names the file and shows only bounded reprs
(``guard.short_repr``). The bytes read from the archive and those of every rebuilt tensor (a stride-0 view at
its full size) count against the memory budget of ``guard.Budget`` before they are allocated.
"""
import _compat_pickle
import io
import pickle
import zipfile
from collections import OrderedDict

import numpy as np

from .guard import Budget, CheckpointBudgetError, short_repr

__all__ = ["read_pth", "plain_dtype", "CheckpointFormatError", "UnsafeCheckpointError"]

_TORCH_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?",
}
# A compressed zip member may not expand beyond this ratio, plus a few bytes for tiny members (torch.save stores
# members uncompressed): a zip bomb would otherwise fill the memory before any check.
_MAX_EXPANSION, _EXPANSION_SLACK = 100, 4096
# Standard modules whose globals have no place in a checkpoint: refused when named, even without a call.
_REFUSED_MODULES = {
    "builtins", "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "importlib", "runpy", "pty",
    "socket", "shutil", "ctypes", "code", "codeop", "pickle", "_pickle", "marshal", "types", "operator",
    "functools", "copyreg", "codecs", "_codecs", "io", "_io", "webbrowser", "multiprocessing", "threading",
    "_thread", "signal", "platform", "asyncio", "tempfile", "glob", "pathlib", "inspect", "gc", "ast",
    "site", "sysconfig", "zipimport", "pdb", "timeit", "trace", "cProfile", "profile", "pydoc", "shlex",
    "http", "urllib", "ftplib", "smtplib", "telnetlib", "xmlrpc", "logging", "atexit", "weakref", "copy",
    "torch", "numpy", "mindspore",
}


class CheckpointFormatError(ValueError):
    """A checkpoint file that cannot be read as what it claims to be (one message naming the file)."""


class UnsafeCheckpointError(CheckpointFormatError):
    """A checkpoint whose pickle asks for something other than data (a call, an import): nothing was run."""


class _StorageType:
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _Global:
    """A global the pickle named that is not on the allow-list: a name only, never imported or called."""
    __slots__ = ("module", "name")

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __repr__(self):
        return f"<{self.module}.{self.name} (not loaded)>"


class _Inert:
    """Stands in for an instance of a class the reader does not load (args, config, ...): its pickled state as
    plain data. ``_Unpickler`` handles BUILD / SETITEMS / APPENDS of stand-ins itself."""
    __slots__ = ("cls", "args", "state", "items", "list")

    def __init__(self, cls, args):
        self.cls, self.args, self.state, self.items, self.list = cls, args, None, {}, []

    def __repr__(self):
        return f"<inert {self.cls.module}.{self.cls.name}>"


def _ints(value, what):
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise CheckpointFormatError(f"tensor {what} {short_repr(value)} is not a tuple of non-negative integers")
    return tuple(value)


def _rebuild_tensor(storage, offset, size, stride, *args, budget):
    """torch._utils._rebuild_tensor_v2 with bounds checks: a view of ``storage`` never reads past it, and its copy
    counts against ``budget`` (at its full size, so a stride-0 view that repeats one element is no bomb)."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise CheckpointFormatError("a tensor's storage is not a storage record of the archive")
    if type(offset) is not int or offset < 0:
        raise CheckpointFormatError(f"tensor storage offset {short_repr(offset)} is not a non-negative integer")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointFormatError(f"tensor size {short_repr(size)} and stride {short_repr(stride)} differ in length")
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise CheckpointFormatError(f"a tensor of size {short_repr(size)} (stride {short_repr(stride)}, offset "
                                    f"{offset}) reaches element {last} of a storage of {storage.size} elements "
                                    "(truncated archive?)")
    if not size:
        return storage[offset].copy()
    budget.take(int(np.prod(size, dtype=object)) * storage.itemsize,
                f"a tensor of size {short_repr(size)} (stride {short_repr(stride)}, storage of {storage.size} "
                "elements)")
    flat = storage[offset:]
    return np.lib.stride_tricks.as_strided(flat, shape=size, strides=[s * flat.itemsize for s in stride]).copy()


def _rebuild_parameter(data, *args):
    if not isinstance(data, np.ndarray):
        raise CheckpointFormatError("a parameter's data is not a tensor")
    return data


def plain_dtype(value):
    """``numpy.dtype(value)`` when it is a plain number type (no object, text, record or sub-array); else an error."""
    dtype = np.dtype(value)
    if dtype.hasobject or dtype.kind not in "biufc?":
        raise CheckpointFormatError(f"numpy dtype {dtype} is not a plain number type")
    return dtype


def _numpy_dtype(name, *args):
    if not isinstance(name, str):
        raise CheckpointFormatError("numpy.dtype needs a type name")
    return plain_dtype(name)


def _numpy_scalar(dtype, data=None):
    dtype = plain_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise CheckpointFormatError(f"numpy {dtype} scalar with {len(data or b'')} bytes")
    return np.frombuffer(data, dtype)[0]


class _ArrayBuilder:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: the array itself comes with BUILD."""
    __slots__ = ("array",)

    def __init__(self):
        self.array = None


def _numpy_reconstruct(cls, shape, typecode):
    return _ArrayBuilder()


def _encode(text, encoding="utf-8"):
    """_codecs.encode as protocol 2 uses it for bytes (``encode(str, 'latin1')``); no other codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise CheckpointFormatError(f"_codecs.encode with {type(text).__name__} / codec {short_repr(encoding)}")
    return text.encode(encoding)


# What a dict key or a set element may be: values whose hash is not a walk over other objects.
_SCALARS = (int, float, complex, str, bytes, bool, type(None))


def _check_scalars(values, kind):
    for value in values:
        if type(value) not in _SCALARS:
            raise CheckpointFormatError(f"{kind} of a {type(value).__name__}: only numbers, text and bytes")


def _plain(kind):
    """``kind(*args)`` (set, frozenset, complex, slice) for numbers, text, bytes and one list of them only."""
    def build(*args):
        for arg in args:
            _check_scalars(arg if type(arg) is list else (arg,), kind.__name__)
        return kind(*args)
    return build


def _torch_size(values=()):
    return _ints(values, "size")


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _torch_size,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): _plain(set),
    ("builtins", "frozenset"): _plain(frozenset),
    ("builtins", "complex"): _plain(complex),
    ("builtins", "slice"): _plain(slice),
    ("_codecs", "encode"): _encode,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): _Global("numpy", "ndarray"),  # only as _reconstruct's argument
}
_ALLOWED.update({("torch", name): _StorageType(name) for name in _TORCH_DTYPES})
_CALLABLE = {id(v) for v in _ALLOWED.values() if callable(v)}

_OPS = pickle._Unpickler.dispatch  # pylint: disable=protected-access


class _Opcodes(dict):
    """The opcode table; a byte that is no opcode names itself (Python's table raises a bare KeyError)."""

    def __missing__(self, code):
        raise CheckpointFormatError(f"byte 0x{code:02x} of its pickle is not a pickle opcode (damaged file)")


class _Unpickler(pickle._Unpickler):  # pylint: disable=protected-access
    """Python's pickle interpreter with every calling / constructing / mutating opcode checked (see module)."""

    dispatch = _Opcodes(_OPS)

    def __init__(self, file, storage, budget):
        super().__init__(file)
        self._storage, self._budget = storage, budget

    def find_class(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise UnsafeCheckpointError("a global with a non-text name")
        if self.proto < 3:  # protocol 2 writes Python 2 names (__builtin__, copy_reg, ...)
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _ALLOWED.get((module, name))
        if found is not None:
            return found
        if module.split(".")[0] in _REFUSED_MODULES or "__" in name:
            raise UnsafeCheckpointError(f"refused global '{module}.{name}': a checkpoint holds data, and this "
                                        "name can run code; nothing was executed")
        return _Global(module, name)

    def persistent_load(self, pid):
        return self._storage(pid)

    # -- opcodes that call, construct or mutate
    def _call(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if isinstance(func, _Global):
            raise UnsafeCheckpointError(f"refused call of global '{func.module}.{func.name}': only tensors, "
                                        "containers and plain values are rebuilt; nothing was executed")
        if id(func) not in _CALLABLE or not isinstance(args, tuple):
            raise UnsafeCheckpointError(f"refused call of {type(func).__name__}: not an allowed rebuild function")
        if func is OrderedDict and args:  # torch.save writes OrderedDict() and then its items (checked keys)
            raise CheckpointFormatError("OrderedDict called with arguments")
        self.stack[-1] = func(*args, budget=self._budget) if func is _rebuild_tensor else func(*args)
    dispatch[pickle.REDUCE[0]] = _call

    def _new(self, kwargs=None):
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls is OrderedDict and not args and not kwargs:
            self.append(OrderedDict())
        elif isinstance(cls, _Global):
            self.append(_Inert(cls, args))
        else:
            raise UnsafeCheckpointError(f"refused construction of {type(cls).__name__}")

    def _newobj(self):
        self._new()
    dispatch[pickle.NEWOBJ[0]] = _newobj

    def _newobj_ex(self):
        kwargs = self.stack.pop()
        self._new(kwargs)
    dispatch[pickle.NEWOBJ_EX[0]] = _newobj_ex

    def _build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _Inert):
            inst.state = state
        elif isinstance(inst, _ArrayBuilder):
            inst.array = _array_from_state(state, self._budget)
            self.stack[-1] = inst.array
        elif isinstance(inst, OrderedDict) and isinstance(state, dict):
            pass  # a state dict's _metadata (per-module versions): not needed
        elif isinstance(inst, np.dtype) and isinstance(state, tuple):
            pass  # byte order and flags of a plain dtype, already fixed by its name
        else:
            raise UnsafeCheckpointError(f"refused state update (BUILD) of {type(inst).__name__}")
    dispatch[pickle.BUILD[0]] = _build

    def _refused(self):
        raise UnsafeCheckpointError("refused opcode (protocol 0/1 instantiation or an extension code): nothing "
                                    "was executed")
    for _op in (pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refused

    def _append(self):
        value = self.stack.pop()
        self._extend([value])
    dispatch[pickle.APPEND[0]] = _append

    def _appends(self):
        self._extend(self.pop_mark())
    dispatch[pickle.APPENDS[0]] = _appends

    def _extend(self, items):
        target = self.stack[-1]
        if isinstance(target, _Inert):
            target.list.extend(items)
        elif type(target) is list:
            target.extend(items)
        else:
            raise UnsafeCheckpointError(f"refused APPEND to {type(target).__name__}")

    def _setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._update([key, value])
    dispatch[pickle.SETITEM[0]] = _setitem

    def _setitems(self):
        self._update(self.pop_mark())
    dispatch[pickle.SETITEMS[0]] = _setitems

    def _update(self, items):
        target = self.stack[-1]
        if isinstance(target, _Inert):
            target = target.items
        elif type(target) not in (dict, OrderedDict):
            raise UnsafeCheckpointError(f"refused SETITEM on {type(target).__name__}")
        keys = items[0:len(items) - 1:2]
        _check_scalars(keys, "a dict key")
        for key, value in zip(keys, items[1::2]):
            target[key] = value

    def _dict(self):
        items = self.pop_mark()
        self.append({})
        self._update(items)
    dispatch[pickle.DICT[0]] = _dict

    def _frozenset(self):
        items = self.pop_mark()
        _check_scalars(items, "frozenset")
        self.append(frozenset(items))
    dispatch[pickle.FROZENSET[0]] = _frozenset

    def _additems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise UnsafeCheckpointError(f"refused ADDITEMS to {type(target).__name__}")
        _check_scalars(items, "set")
        target.update(items)
    dispatch[pickle.ADDITEMS[0]] = _additems


def _array_from_state(state, budget):
    """numpy ``ndarray.__setstate__``'s (version, shape, dtype, fortran, raw bytes) for plain dtypes only."""
    if not isinstance(state, tuple) or len(state) != 5:
        raise CheckpointFormatError("numpy array state is not (version, shape, dtype, fortran, data)")
    _, shape, dtype, fortran, raw = state
    shape = _ints(shape, "shape")
    if not isinstance(dtype, np.dtype) or not isinstance(raw, bytes):
        raise CheckpointFormatError("numpy array of a non-plain dtype")
    count = int(np.prod(shape, dtype=object))
    if count * dtype.itemsize != len(raw):
        raise CheckpointFormatError(f"numpy array of shape {short_repr(shape)} with {len(raw)} bytes")
    budget.take(len(raw), f"a numpy array of shape {short_repr(shape)}")
    return np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C").copy()


def _read_member(archive, name, path, budget):
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointFormatError(f"'{path}': the archive has no member {short_repr(name)} (truncated or "
                                    "incomplete checkpoint?)") from None
    if info.file_size > _MAX_EXPANSION * info.compress_size + _EXPANSION_SLACK:
        raise CheckpointFormatError(f"'{path}': member {short_repr(name)} expands {info.compress_size} bytes to "
                                    f"{info.file_size}; torch.save does not compress, refusing a zip bomb")
    budget.take(info.file_size, f"member {short_repr(name)} ({info.file_size} bytes)")
    return archive.read(info)


class _Storages:
    """persistent_load: ('storage', <torch.XStorage>, key, location, numel) -> the member's bytes as numpy."""

    def __init__(self, archive, prefix, path, budget):
        self.archive, self.prefix, self.path, self.budget, self.cache = archive, prefix, path, budget, {}
        order = b"little"
        if f"{prefix}byteorder" in archive.namelist():  # torch >= 2.1 records the writer's byte order
            order = _read_member(archive, f"{prefix}byteorder", path, budget).strip()
        if order not in (b"little", b"big"):
            raise CheckpointFormatError(f"'{path}': unknown byte order {order[:20]!r}")
        self.big_endian = order == b"big"

    def __call__(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise CheckpointFormatError(f"'{self.path}': a persistent id {short_repr(pid)} is not a torch storage "
                                        "record")
        storage_type, key = pid[1], pid[2]
        cached = self.cache.get((key, storage_type.name))
        if cached is not None:
            return cached
        raw = _read_member(self.archive, f"{self.prefix}data/{key}", self.path, self.budget)
        dtype = _TORCH_DTYPES[storage_type.name]
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if len(raw) % itemsize:
            raise CheckpointFormatError(f"'{self.path}': storage {short_repr(key)} has {len(raw)} bytes, not a whole "
                                        f"number of {storage_type.name} elements")
        if dtype == "bfloat16":
            array = (np.frombuffer(raw, ">u2" if self.big_endian else "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, np.dtype(dtype).newbyteorder(">") if self.big_endian else dtype)
        self.cache[(key, storage_type.name)] = array
        return array


def read_pth(path, net=None):
    """The object a zip-format ``torch.save`` wrote to ``path``, tensors as numpy arrays (see the module doc:
    nothing the file names is called unless it is on the allow-list); ``net``, the model it is read for, sets
    the memory budget."""
    if not zipfile.is_zipfile(path):
        raise CheckpointFormatError(
            f"'{path}' is not a zip-format PyTorch checkpoint (torch >= 1.6), or it is truncated. Re-save it with "
            "torch.save(torch.load(path, weights_only=True), path) and convert again.")
    try:
        with zipfile.ZipFile(path) as archive:
            pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not pkl:
                raise CheckpointFormatError(f"'{path}' is a zip file but not a PyTorch checkpoint (no data.pkl).")
            prefix = pkl[0][: -len("data.pkl")]
            budget = Budget(path, net)
            data = _read_member(archive, pkl[0], path, budget)
            return _Unpickler(io.BytesIO(data), _Storages(archive, prefix, path, budget), budget).load()
    except CheckpointBudgetError:
        raise
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"'{path}' is not a safe checkpoint: {err}") from None
    except CheckpointFormatError as err:
        if str(err).startswith(f"'{path}'"):
            raise
        raise CheckpointFormatError(f"'{path}' is not a readable PyTorch checkpoint: {err}") from None
    except (MemoryError, RecursionError) as err:
        raise CheckpointFormatError(f"'{path}' is not a readable PyTorch checkpoint: its pickle is too large or "
                                    f"too deeply nested ({type(err).__name__})") from None
    except Exception as err:  # zipfile, zlib, pickle and struct raise many types for a damaged file
        raise CheckpointFormatError(f"'{path}' is not a readable PyTorch checkpoint (damaged or truncated: "
                                    f"{describe_error(err)})") from None


def describe_error(err):
    """``module.Type: text`` of an exception, short (``struct.error``, not a bare ``error``)."""
    kind = type(err)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    return f"{name}: {' '.join(str(err).split())[:200]}"
