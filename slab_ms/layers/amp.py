"""Seeing through mixed precision: the cell-wrapping AMP of MindSpore and MindCV.

``mindcv.utils.amp.auto_mixed_precision`` wraps each Dense / Conv (O1) or each BatchNorm / LayerNorm (O2) in a
cell that casts its output (``_OutputTo32`` / ``_OutputTo16``), and ``mindspore.Model(amp_level="O2")``,
``mindspore.amp.build_train_network`` and ``mindspore.amp.auto_mixed_precision`` do the same with MindSpore's
classes (the last also wraps the whole network). O2 / O3 also set ``to_float(float16)`` flags. Code that reads
a cell's children by attribute or walks cells by type uses these helpers, so a wrapper is never mistaken for
the cell it holds.
"""
import mindspore as ms
from mindcv.utils import amp as _mindcv_amp
from mindspore import nn
from mindspore.train import amp as _mindspore_amp

__all__ = ["AMP_WRAPPERS", "unwrap_amp", "cells_and_names_through_amp", "parameters_and_names_through_amp", "is_amp",
           "strip_amp"]

AMP_WRAPPERS = (_mindspore_amp._OutputTo16, _mindspore_amp._OutputTo32,  # pylint: disable=protected-access
                _mindcv_amp._OutputTo16, _mindcv_amp._OutputTo32)  # pylint: disable=protected-access


def unwrap_amp(cell):
    """The cell inside any AMP output-cast wrappers around ``cell`` (``cell`` itself when it has none)."""
    while type(cell) in AMP_WRAPPERS:  # pylint: disable=unidiomatic-typecheck
        (cell,) = cell.name_cells().values()  # a wrapper holds exactly one cell
    return cell


def cells_and_names_through_amp(net):
    """``net.cells_and_names()`` as if no AMP wrapper were there: each real cell once, under the name of the
    position it fills (a wrapped cell's name without the wrapper's inner attribute)."""
    seen = set()
    for name, cell in unwrap_amp(net).cells_and_names():
        inner = unwrap_amp(cell)
        if id(inner) in seen:
            continue
        seen.add(id(inner))
        yield name, inner


def parameters_and_names_through_amp(net):
    """``net.parameters_and_names()`` as if no AMP wrapper were there (the names a checkpoint of ``net`` holds)."""
    seen = set()
    for cell_name, cell in cells_and_names_through_amp(net):
        for name, param in cell._params.items():  # pylint: disable=protected-access
            if param is not None and id(param) not in seen:
                seen.add(id(param))
                yield (f"{cell_name}.{name}" if cell_name else name), param


def is_amp(net):
    """True when ``net`` holds an AMP wrapper or a cell set to compute in float16 / bfloat16."""
    return any(type(cell) in AMP_WRAPPERS  # pylint: disable=unidiomatic-typecheck
               or getattr(cell.mixed_precision_type, "name", None) in ("FP16", "BF16")
               for _, cell in net.cells_and_names())


def strip_amp(net):
    """``net`` with every AMP wrapper replaced by the cell inside and, when it had any AMP, every cell set to
    compute in float32 (``to_float(float32)`` over O2 / O3's float16 flags); changed in place. Returns the real
    network (a network that is itself a wrapper is unwrapped). Parameter names are kept; a network without AMP
    is returned unchanged."""
    net = unwrap_amp(net)
    if not is_amp(net):
        return net
    for _, cell in list(net.cells_and_names()):
        children = cell.name_cells()
        wrapped = [name for name, child in children.items() if unwrap_amp(child) is not child]
        for name in wrapped:  # set as the wrappers were: no parameter is renamed
            cell._cells[name] = unwrap_amp(children[name])  # pylint: disable=protected-access
        if wrapped and isinstance(cell, nn.SequentialCell):
            cell.cell_list = list(cell.cells())
    return net.to_float(ms.float32)
