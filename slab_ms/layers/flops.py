"""FLOPs of a model (2 per multiply-add), counted from the shapes its cells see in one batch-1 forward.

Dense and Conv2d layers count from their weights and outputs (an MLP's two from its input), a patch
embedding as the matmul it runs, and each attention core by its formula: softmax Q Kᵀ and A V over its
keys; SLA Kᵀ V and Q (Kᵀ V), or (Q Kᵀ) V when N ≤ head_dim, plus the normaliser and the k×k depth-wise
conv on V. Element-wise work is not counted. Each family registers the formula of its own attention cells
(``register_flops``), so this counter imports no family.
"""
import numpy as np
import mindspore as ms
from mindspore import nn

from .amp import cells_and_names_through_amp, unwrap_amp
from .attention import Attention, SimplifiedLinearAttention
from .helpers import registered_for
from .mlp import Mlp
from .patch_embed import PatchConv2d, PatchEmbed

__all__ = ["count_flops", "register_flops", "softmax_flops", "sla_flops"]

_FORMULAS = {}


def register_flops(*cell_types):
    """Register ``formula(cell, inputs, output) -> FLOPs`` for cells of these types (their subclasses too,
    unless those register their own: :func:`~slab_ms.layers.helpers.registered_for`)."""
    def decorator(formula):
        for cell_type in cell_types:
            _FORMULAS[cell_type] = formula
        return formula
    return decorator


def softmax_flops(batch, queries, keys, channels):
    """Q Kᵀ and A V of softmax attention."""
    return 4.0 * batch * queries * keys * channels


def sla_flops(cell, batch, tokens, channels, window_tokens=None):
    """Kᵀ V and Q (Kᵀ V) (or (Q Kᵀ) V for windows of at most head_dim tokens), the normaliser, the DWC."""
    window_tokens = tokens if window_tokens is None else window_tokens
    products = 4.0 * batch * tokens * channels * min(cell.head_dim, window_tokens)
    k = unwrap_amp(cell.dwc).weight.shape[-1] if cell.use_dwc else 0
    return products + 2.0 * batch * tokens * channels + 2.0 * batch * tokens * channels * k * k


@register_flops(nn.Dense)
def _dense(cell, inputs, output):
    return 2.0 * np.prod(output.shape[:-1]) * cell.weight.shape[0] * cell.weight.shape[1]


@register_flops(nn.Conv2d)
def _conv(cell, inputs, output):
    return 2.0 * np.prod(output.shape) * cell.weight.shape[1] * cell.weight.shape[2] * cell.weight.shape[3]


@register_flops(PatchEmbed)
def _patch_embed(cell, inputs, output):  # the patch conv runs as a matmul over patches
    b, n, d = output[0].shape
    return 2.0 * b * n * d * int(np.prod(unwrap_amp(cell.proj).weight.shape[1:]))


@register_flops(Mlp)
def _mlp(cell, inputs, output):  # its two Dense layers (in eval mode fc1 runs inside the fused bias-GELU kernel)
    tokens = np.prod(inputs[0].shape[:-1])
    return 2.0 * tokens * sum(np.prod(unwrap_amp(fc).weight.shape) for fc in (cell.fc1, cell.fc2))


@register_flops(Attention)
def _softmax(cell, inputs, output):
    b, n, c = inputs[0].shape
    return softmax_flops(b, n, n, c)


@register_flops(SimplifiedLinearAttention)
def _sla(cell, inputs, output):
    b, n, c = inputs[0].shape
    return sla_flops(cell, b, n, c)


def count_flops(net, image_size, in_channels=3):
    """FLOPs of one ``image_size``² image through ``net`` (a batch-1 forward in PyNative mode with forward
    hooks; the caller's execution mode is restored afterwards)."""
    total = [0.0]
    # The depth-wise conv of SLA and an Mlp's two Dense layers are in their cell's formula; a patch conv is in its
    # patch embedding's (or its spatial reduction's) formula. Every other Dense / Conv2d, also inside an attention
    # cell, counts on its own.
    cells = [c for _, c in cells_and_names_through_amp(net)]
    inside = {id(unwrap_amp(c.dwc)) for c in cells if isinstance(c, SimplifiedLinearAttention) and c.use_dwc}
    inside |= {id(unwrap_amp(fc)) for c in cells if isinstance(c, Mlp) for fc in (c.fc1, c.fc2)}
    counted = [(cell, registered_for(_FORMULAS, cell)) for cell in cells
               if registered_for(_FORMULAS, cell) is not None and id(cell) not in inside
               and not isinstance(cell, PatchConv2d)]

    def hook(formula):
        def record(cell, inputs, output):
            total[0] += formula(cell, inputs, output)
        return record

    handles = [cell.register_forward_hook(hook(formula)) for cell, formula in counted]
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net(ms.Tensor(np.zeros((1, in_channels, image_size, image_size), np.float32)))
    finally:
        for handle in handles:
            handle.remove()
        ms.set_context(mode=mode)
    return total[0]
