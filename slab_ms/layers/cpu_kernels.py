"""Native CPU kernels: simplified linear attention, the DeiT softmax attention core, depth-wise convs, LayerNorm,
RepBN / the token BatchNorm, the exact GELU and the dense layers (through the ``dnnl_sgemm`` of the oneDNN library
that MindSpore ships), with native backwards for those that run in training.

``cpu_kernels.cc`` is compiled with the machine's ``g++`` (``-O3 -march=native``) on first use and cached
under ``$XDG_CACHE_HOME/slab_ms`` (default ``~/.cache/slab_ms``; if that is not writable, a per-user folder in
the temporary directory), one library per source and CPU; the kernels run through ``ops.Custom(func_type="aot")``
and differentiate through their native backward kernel or, without one, as the same function in standard ops.
Cells use them on float32 CPU tensors only: SLA on the packed qkv projection, the softmax attention core, LayerNorm,
the GELU and the dense layers in training and eval mode, RepBN's batch-statistics pass in training, SLA on separate
q, k, v and CSwin's LePE in eval mode; other dtypes and devices, a machine without ``g++`` (or, for the dense
layers, without MindSpore's oneDNN) and ``SLAB_MS_NATIVE_KERNELS=0`` use the standard MindSpore ops; both agree to
float32 tolerance (the conv to rounding, the GELU's erf within 4.3e-7). Exported graphs never contain them:
``use_standard_ops(net)`` switches a network back, and the export tool calls it before writing MindIR or ONNX.
"""
import hashlib
import inspect
import os
import platform
import shutil
import subprocess
import tempfile

import mindspore as ms
from mindspore import ops

__all__ = ["library_path", "dnnl_library", "NativeKernel", "kernel", "native_kernels", "Float32Kernels",
           "use_standard_ops"]

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.cc")
FLAGS = ["-std=c++17", "-O3", "-march=native", "-shared", "-fPIC", "-pthread"]
_LIBRARY = []  # [path or None] once decided in this process


def _cpu_identity():
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags")))
    except OSError:
        return platform.processor()


def dnnl_library():
    """Path of the oneDNN library that MindSpore ships and its CPU backend loads (the Dense kernels call its
    ``dnnl_sgemm``), or None."""
    folder = os.path.join(os.path.dirname(os.path.abspath(ms.__file__)), "lib")
    if not os.path.isdir(folder):
        return None
    names = sorted(name for name in os.listdir(folder) if name.startswith("libdnnl.so"))
    return os.path.join(folder, names[-1]) if names else None


def _flags():
    dnnl = dnnl_library()
    return FLAGS + ([f'-DSLAB_MS_DNNL="{dnnl}"'] if dnnl else [])


def _cache_dirs():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [os.path.join(base, "slab_ms"), os.path.join(tempfile.gettempdir(), f"slab_ms-{os.getuid()}")]


def _compile():
    """The cached library's path, compiling it when missing (in the first writable cache folder); None when
    that is impossible."""
    compiler = shutil.which("g++")
    if compiler is None or platform.system() != "Linux":
        return None
    try:
        with open(SOURCE, "rb") as f:
            source = f.read()
    except OSError:
        return None
    flags = _flags()
    key = hashlib.sha256(source + " ".join(flags).encode() + _cpu_identity().encode()).hexdigest()[:16]
    for folder in _cache_dirs():
        path = os.path.join(folder, f"cpu_kernels-{key}.so")
        if os.path.exists(path):
            return path
        try:
            os.makedirs(folder, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=folder, suffix=".so.tmp")
            os.close(handle)
            try:
                subprocess.run([compiler, *flags, "-o", temp, SOURCE], check=True, capture_output=True, timeout=120)
                os.replace(temp, path)  # atomic: concurrent first uses each compile, one wins, none reads half a file
            finally:
                if os.path.exists(temp):
                    os.remove(temp)
            return path
        except (OSError, subprocess.SubprocessError):
            continue
    return None


def library_path():
    """Path of the compiled kernels, or None where they are not used (see the module docstring)."""
    if os.environ.get("SLAB_MS_NATIVE_KERNELS", "1") == "0" or ms.get_context("device_target") != "CPU":
        return None
    if not _LIBRARY:
        _LIBRARY.append(_compile())
    return _LIBRARY[0]


def _bprop(reference):
    """The bprop of a kernel computing ``reference`` (graph mode wants its parameters spelled out)."""
    grad = ops.GradOperation(get_all=True, sens_param=True)(reference)
    arity = len(inspect.signature(reference).parameters)
    if arity == 1:
        def bprop(x, out, dout):
            return grad(x, dout)
    elif arity == 2:
        def bprop(x, y, out, dout):
            return grad(x, y, dout)
    elif arity == 3:
        def bprop(x, y, z, out, dout):
            return grad(x, y, z, dout)
    elif arity == 4:
        def bprop(x, p, w, b, out, dout):
            return grad(x, p, w, b, dout)
    elif arity == 6:
        def bprop(q, k, v, p, w, b, out, dout):
            return grad(q, k, v, p, w, b, dout)
    else:
        raise ValueError(f"no bprop for a kernel of {arity} inputs")
    return bprop


class NativeKernel(ops.Custom):
    """``ops.Custom`` running one function of the compiled kernels; its output has the first input's dtype and, unless
    ``out_shape`` maps the input shapes to another, its shape (``out_shape`` / ``out_dtype`` may return tuples for a
    kernel of several outputs).

    Its gradient is ``bprop`` (``bprop(*inputs, out, dout)`` returning one gradient per input, e.g. a native backward
    kernel) or else that of ``reference``, the same function in standard ops, so a network in evaluation mode still
    differentiates (input saliency, frozen stages under a trainer). Stateless, so copies of a network
    (``copy.deepcopy``, as ``reparameterize_model`` makes) share it.
    """

    def __init__(self, path, name, reference, out_shape=None, out_dtype=None, bprop=None):
        super().__init__(f"{path}:{name}", out_shape=out_shape or (lambda shape, *_: shape),
                         out_dtype=out_dtype or (lambda dtype, *_: dtype), func_type="aot",
                         bprop=bprop or _bprop(reference))

    def __deepcopy__(self, memo):
        return self


def kernel(name, reference, out_shape=None, out_dtype=None, bprop=None):
    """The ``NativeKernel`` running ``name`` from ``cpu_kernels.cc`` (differentiated by ``bprop`` or else as
    ``reference``, the same function in standard ops), or None where native kernels are not used. A cell keeps it in
    an attribute and takes the standard ops where that attribute is None."""
    path = library_path()
    if path is None:
        return None
    try:
        return NativeKernel(path, name, reference, out_shape, out_dtype, bprop)
    except (TypeError, ValueError, RuntimeError):  # e.g. a MS_CUSTOM_AOT_WHITE_LIST that excludes the cache
        return None


def native_kernels(cell):
    """{attribute name: kernel} of the ``NativeKernel`` attributes of ``cell`` (not of its sub-cells)."""
    return {name: value for name, value in vars(cell).items() if isinstance(value, NativeKernel)}


class Float32Kernels:
    """Mixin for a cell whose native kernels take float32 only: set to float16 or bfloat16 (``to_float``, AMP), the
    cell drops them, since in PyNative mode its ops then receive float16 inputs whatever dtype ``construct`` sees."""

    def add_flags(self, **flags):
        if flags.get("fp16") or flags.get("bf16"):
            for name in native_kernels(self):
                setattr(self, name, None)
        return super().add_flags(**flags)


def use_standard_ops(net):
    """Switch every cell of ``net`` from its native kernels to the standard ops (each attribute holding a
    ``NativeKernel`` becomes None); returns how many kernels were switched."""
    switched = 0
    for _, cell in net.cells_and_names():
        for name in native_kernels(cell):
            setattr(cell, name, None)
            switched += 1
    return switched
