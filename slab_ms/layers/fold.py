"""Fold primitives: a norm's eval-mode affine map merged into the linear layer next to it.

An eval-mode RepBN / PRepBN / BN is a fixed per-channel map ``u = a ⊙ x + b``, and an affine map folds
exactly into a neighbouring linear map:

* norm → Dense ``y = W u + c``:            W' = W·diag(a),  c' = W b + c   (a bias-free Dense gains one);
  the same for a Conv without padding (kernel = stride): c' = c + Σ W b;
* Conv ``u = W x + c`` → norm:             W' = diag(a)·W,  c' = a ⊙ c + b (the reference's PatchEmbed
  merge drops the η·c inside a ⊙ c; here it is kept);
* final norm → mean-pool or class token → head: pooling is linear and per channel, so the norm folds
  into the head like any norm → Dense.

A zero-padded consumer is refused (zeros after the norm would be shifted by b), never folded inexactly.
Each family registers, per owning cell type, a ``fold(cell)`` built from these primitives
(:func:`register_fold`); ``slab_ms.reparameterize_model`` walks a network once and calls them.
"""
import numpy as np
from mindspore import Parameter, Tensor, nn

from .dense import Dense
from .helpers import registered_for
from .norm import PRepBN, TokenBatchNorm

__all__ = ["ChannelAffine", "register_fold", "registered_fold", "child_cell", "replace_cell", "can_absorb",
           "fold_norm_into_consumers", "fold_norm_into_producer", "keep_as_affine", "fold_final_norm",
           "zero_preimage"]

_FOLDS = {}


class ChannelAffine(nn.Cell):
    """x ↦ x·scale + shift over the last (channel) axis: a norm's eval map kept where it cannot be folded."""

    def __init__(self, scale, shift):
        super().__init__()
        self.scale = Parameter(Tensor(np.asarray(scale, np.float32)), name="scale", requires_grad=False)
        self.shift = Parameter(Tensor(np.asarray(shift, np.float32)), name="shift", requires_grad=False)

    def construct(self, x):
        return x * self.scale + self.shift


def register_fold(*cell_types):
    """Register ``fold(cell)`` for cells of these types (their subclasses too, unless those register their own:
    :func:`~slab_ms.layers.helpers.registered_for`); it rewires the cell's own children."""
    def decorator(fold):
        for cell_type in cell_types:
            _FOLDS[cell_type] = fold
        return fold
    return decorator


def registered_fold(cell):
    """The fold registered for ``cell``'s type or its nearest registered base class, or None."""
    return registered_for(_FOLDS, cell)


def child_cell(parent, name):
    """The direct child cell ``parent.<name>``."""
    return parent.name_cells()[name]


def replace_cell(parent, name, cell):
    """Make ``cell`` the child ``parent.<name>`` (also inside a SequentialCell / CellList)."""
    if cell is child_cell(parent, name):
        return
    if isinstance(parent, nn.SequentialCell):
        # SequentialCell.__setitem__ re-derives parameter-name prefixes from its children's first parameters
        # and fails on a PRepBN (its first parameter is the model-level schedule); set both views directly.
        parent._cells[name] = cell  # pylint: disable=protected-access
        parent.cell_list = list(parent._cells.values())  # pylint: disable=protected-access
    else:
        setattr(parent, name, cell)


def _eval_affine(norm):
    """``(a, b)`` float64 of the norm's eval map, or None for a cell without one (LayerNorm, Identity)."""
    return norm.affine() if isinstance(norm, (TokenBatchNorm, PRepBN)) else None


def _np(param):
    return param.asnumpy().astype(np.float64)


def _weight_and_bias(cell):
    weight = _np(cell.weight)
    return weight, (_np(cell.bias) if cell.has_bias else np.zeros(weight.shape[0]))


def _with_weights(cell, weight, bias):
    """``cell`` (Dense or Conv2d) with new weight and bias: updated in place when it has a bias (names kept),
    else a copy of it that has one."""
    dtype = cell.weight.asnumpy().dtype
    weight, bias = Tensor(weight.astype(dtype)), Tensor(bias.astype(dtype))
    if cell.has_bias:
        cell.weight.set_data(weight)
        cell.bias.set_data(bias)
        return cell
    if isinstance(cell, nn.Dense):
        return Dense(cell.in_channels, cell.out_channels, weight_init=weight, bias_init=bias, has_bias=True)
    return nn.Conv2d(cell.in_channels, cell.out_channels, cell.kernel_size, stride=cell.stride,
                     pad_mode=cell.pad_mode, padding=cell.padding, dilation=cell.dilation, group=cell.group,
                     has_bias=True, weight_init=weight, bias_init=bias, data_format=cell.data_format)


def can_absorb(cell):
    """True for a cell that can take a per-channel affine on its input exactly: a Dense without activation,
    or an ungrouped Conv2d that never zero-pads (zeros would be shifted by b: a padded conv cannot)."""
    if isinstance(cell, nn.Dense):
        return not cell.activation_flag
    if not isinstance(cell, nn.Conv2d) or cell.group != 1:
        return False
    pointwise = all(k == 1 for k in cell.kernel_size) and all(s == 1 for s in cell.stride)
    return (cell.pad_mode == "valid" or (cell.pad_mode == "pad" and cell.padding == 0)
            or (cell.pad_mode == "same" and pointwise))


def _consumer_weights(cell, a, b):
    """Weight and bias of ``cell(a ⊙ u + b)`` as one cell: a Dense (W' = W·diag(a), c' = W b + c), or a
    Conv2d that never pads (c' = c + Σ W b)."""
    if not can_absorb(cell):
        raise TypeError(f"cannot fold a norm into a following {cell!r}")
    weight, bias = _weight_and_bias(cell)
    if isinstance(cell, nn.Dense):
        return weight * a, weight @ b + bias
    return weight * a[None, :, None, None], bias + np.einsum("oikl,i->o", weight, b)


def _producer_before_affine(conv, a, b):
    """``a ⊙ conv(x) + b`` as one Conv2d: W' = diag(a)·W, c' = a ⊙ c + b (keeps the η·c term)."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"cannot fold a norm into a preceding {conv!r}")
    weight, bias = _weight_and_bias(conv)
    return _with_weights(conv, weight * a[:, None, None, None], a * bias + b)


def zero_preimage(norm):
    """The input ``u = −b / a`` (float32, per channel) that the norm's eval map ``a ⊙ u + b`` sends to 0, or None
    for a norm without a fixed map. A map padded with zeros *after* a norm is padded with this value once the
    norm is folded into its consumer."""
    affine = _eval_affine(norm)
    if affine is None:
        return None
    a, b = affine
    if np.any(a == 0):
        raise ValueError("a norm with a zero scale has no input that it maps to 0; it cannot be folded exactly "
                         "in front of a padded map.")
    return (-b / a).astype(np.float32)


def fold_norm_into_consumers(owner, norm_name, consumers):
    """Fold the norm ``owner.<norm_name>`` into the cells ``[(parent, name)]`` that read its output.

    The norm becomes Identity. Returns False (and changes nothing) for a norm without a fixed map.
    """
    affine = _eval_affine(child_cell(owner, norm_name))
    if affine is None:
        return False
    folded = [(parent, name, _consumer_weights(child_cell(parent, name), *affine)) for parent, name in consumers]
    for parent, name, (weight, bias) in folded:  # written only once every consumer could take the fold
        replace_cell(parent, name, _with_weights(child_cell(parent, name), weight, bias))
    replace_cell(owner, norm_name, nn.Identity())
    return True


def fold_norm_into_producer(owner, conv_name, norm_name):
    """Fold the norm ``owner.<norm_name>`` into the Conv2d ``owner.<conv_name>`` whose output it normalises."""
    affine = _eval_affine(child_cell(owner, norm_name))
    if affine is None:
        return False
    replace_cell(owner, conv_name, _producer_before_affine(child_cell(owner, conv_name), *affine))
    replace_cell(owner, norm_name, nn.Identity())
    return True


def keep_as_affine(owner, norm_name):
    """Replace the norm ``owner.<norm_name>`` by its eval map as a ``ChannelAffine`` (nothing to fold it into)."""
    affine = _eval_affine(child_cell(owner, norm_name))
    if affine is None:
        return False
    replace_cell(owner, norm_name, ChannelAffine(*affine))
    return True


def fold_final_norm(model, head="head"):
    """Final norm ``model.norm`` → the classifier ``model.<head>`` through the pooling (mean over tokens or
    the class token: both linear).

    Without a Dense head (``num_classes=0``) the features are the output, so the norm stays as an
    exact ``ChannelAffine``.
    """
    if isinstance(child_cell(model, head), nn.Dense):
        fold_norm_into_consumers(model, "norm", [(model, head)])
    else:
        keep_as_affine(model, "norm")
