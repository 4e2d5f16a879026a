"""Deploy form: every RepBN / PRepBN folded into the Dense or Conv next to it (paper Sec. 4.1).

In evaluation a PRepBN is pure RepBN, and RepBN is a fixed per-channel affine map (Lemma 4.1:
RepBN(x; μ, σ, α, β) = BN(x; μ, σ, α + ησ, β + ημ)):

    RepBN(x) = a ⊙ x + b,   a = α/σ + η,   b = β − αμ/σ.

An affine map folds exactly into a neighbouring linear map, so the deployed network computes no
normalization at all:

* norm → Dense ``y = W u + c``:            W' = W·diag(a),  c' = W b + c   (a bias-free Dense gains one);
  the same for a Conv without padding (PVT's spatial reduction, kernel = stride): c' = c + Σ W b;
* Conv ``u = W x + c`` → norm:             W' = diag(a)·W,  c' = a ⊙ c + b (the reference's PatchEmbed
  merge drops the η·c inside a ⊙ c, SPEC §5.2; here it is kept);
* final norm → mean-pool or class token → head: pooling is linear and per channel, so the norm folds
  into the head like any norm → Dense.

Which norm goes where, per family: block norm1 → qkv (DeiT, Swin, CSwin) or q and kv / q and the
spatial-reduction conv (PVT), block norm2 → mlp.fc1, PVT's ``attn.norm`` → the ``sr`` conv before
it, patch-embedding / CSwin stem / merge-block norms → the conv before them, Swin PatchMerging norm
→ ``reduction``, final norm → head (PVT v1 has none).

A LayerNorm (the ``norm="ln"`` baseline) normalises with per-token statistics and has no fixed map:
it stays, and so does any norm whose owner has no fold. Both are logged and listed by
``remaining_norms``, never skipped silently. A RepBN with nothing linear to fold into (the final
norm of a headless model) becomes a ``ChannelAffine`` (a multiply-add, no statistics). Every fold
here is exact: no norm output is zero-padded before the layer it folds into (Swin never pads, PVT's
``sr`` conv has no padding, the padded CSwin convs pad their inputs, not the normalised outputs);
a padded consumer is refused (``_consumer_weights``) rather than folded inexactly.

Folds are registered per owning cell type (``register_fold``); ``reparameterize_model`` walks the
network once and calls them.
"""
import copy
import logging

import numpy as np
from mindspore import Parameter, Tensor, nn

from .layers.norm import PRepBN, TokenBatchNorm
from .layers.patch_embed import PatchEmbed
from .models import cswin, deit, pvt, swin

__all__ = ["reparameterize_model", "remaining_norms", "register_fold", "ChannelAffine", "fold_norm_into_consumers",
           "fold_norm_into_producer", "keep_as_affine", "fold_final_norm"]

_logger = logging.getLogger(__name__)

# Cells that compute a normalization (RepBN is a TokenBatchNorm); none should be left after folding.
NORM_CELLS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d,
              TokenBatchNorm, PRepBN)
_SCHEDULE_PARAMS = ("prepbn_step", "prepbn_decay_steps", "prepbn_warmup_steps")
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
    """Register ``fold(cell)`` for cells of exactly these types; it rewires the cell's own children."""
    def decorator(fold):
        for cell_type in cell_types:
            _FOLDS[cell_type] = fold
        return fold
    return decorator


def reparameterize_model(net, inplace=False):
    """The deploy form of ``net``: same eval outputs, every foldable norm folded, in eval state.

    Works on a deep copy of ``net`` (the training form is left as it is) unless ``inplace``. Norms
    that cannot be folded are logged as a warning; ``remaining_norms(deploy)`` lists them. The
    deploy form's ``forward_features`` returns the tokens *before* the final norm (it lives in the
    head now); use the training form for features.
    """
    deploy = net if inplace else copy.deepcopy(net)
    deploy.set_train(False)
    for _, cell in list(deploy.cells_and_names()):
        fold = _FOLDS.get(type(cell))
        if fold is not None:
            fold(cell)
    if not any(isinstance(cell, PRepBN) for _, cell in deploy.cells_and_names()):
        for name in _SCHEDULE_PARAMS:  # the γ schedule has no reader left
            if hasattr(deploy, name):
                delattr(deploy, name)
    for name, param in deploy.parameters_and_names():
        param.name = name  # Dense cells that gained a bias were built with short names
    left = remaining_norms(deploy)
    if left:
        _logger.warning("%s: %d norm cell(s) not folded:\n  %s", type(net).__name__, len(left), "\n  ".join(
            f"{name} ({kind}): {reason}" for name, kind, reason in left))
    return deploy


def remaining_norms(net):
    """``[(name, type, reason)]`` for every normalization cell in ``net`` (outermost only)."""
    cells = dict(net.cells_and_names())
    found = []
    for name, cell in cells.items():
        if not isinstance(cell, NORM_CELLS) or any(name.startswith(outer + ".") for outer, _, _ in found):
            continue
        if isinstance(cell, nn.LayerNorm):
            reason = "LayerNorm uses per-token statistics: no fixed affine map to fold"
        else:
            owner = cells.get(name.rpartition(".")[0], net)
            reason = f"no fold registered for its owner {type(owner).__name__}"
        found.append((name, type(cell).__name__, reason))
    return found


# ------------------------------------------------------------------------------------ fold primitives
def _child(parent, name):
    return parent.name_cells()[name]


def _replace(parent, name, cell):
    if cell is _child(parent, name):
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
        return nn.Dense(cell.in_channels, cell.out_channels, weight_init=weight, bias_init=bias, has_bias=True)
    return nn.Conv2d(cell.in_channels, cell.out_channels, cell.kernel_size, stride=cell.stride,
                     pad_mode=cell.pad_mode, padding=cell.padding, dilation=cell.dilation, group=cell.group,
                     has_bias=True, weight_init=weight, bias_init=bias, data_format=cell.data_format)


def _consumer_weights(cell, a, b):
    """Weight and bias of ``cell(a ⊙ u + b)`` as one cell: a Dense (W' = W·diag(a), c' = W b + c), or a
    Conv2d without padding (zero padding would be shifted by b, so a padded conv cannot absorb the
    norm in front of it)."""
    weight, bias = _weight_and_bias(cell)
    if isinstance(cell, nn.Dense) and not cell.activation_flag:
        return weight * a, weight @ b + bias
    unpadded = cell.pad_mode == "valid" or (cell.pad_mode == "pad" and cell.padding == 0)
    if isinstance(cell, nn.Conv2d) and cell.group == 1 and unpadded:
        return weight * a[None, :, None, None], bias + np.einsum("oikl,i->o", weight, b)
    raise TypeError(f"cannot fold a norm into a following {cell!r}")


def _producer_before_affine(conv, a, b):
    """``a ⊙ conv(x) + b`` as one Conv2d: W' = diag(a)·W, c' = a ⊙ c + b (keeps the η·c term)."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"cannot fold a norm into a preceding {conv!r}")
    weight, bias = _weight_and_bias(conv)
    return _with_weights(conv, weight * a[:, None, None, None], a * bias + b)


def fold_norm_into_consumers(owner, norm_name, consumers):
    """Fold the norm ``owner.<norm_name>`` into the cells ``[(parent, name)]`` that read its output.

    The norm becomes Identity. Returns False (and changes nothing) for a norm without a fixed map.
    """
    affine = _eval_affine(_child(owner, norm_name))
    if affine is None:
        return False
    folded = [(parent, name, _consumer_weights(_child(parent, name), *affine)) for parent, name in consumers]
    for parent, name, (weight, bias) in folded:  # written only once every consumer could take the fold
        _replace(parent, name, _with_weights(_child(parent, name), weight, bias))
    _replace(owner, norm_name, nn.Identity())
    return True


def fold_norm_into_producer(owner, conv_name, norm_name):
    """Fold the norm ``owner.<norm_name>`` into the Conv2d ``owner.<conv_name>`` whose output it normalises."""
    affine = _eval_affine(_child(owner, norm_name))
    if affine is None:
        return False
    _replace(owner, conv_name, _producer_before_affine(_child(owner, conv_name), *affine))
    _replace(owner, norm_name, nn.Identity())
    return True


def keep_as_affine(owner, norm_name):
    """Replace the norm ``owner.<norm_name>`` by its eval map as a ``ChannelAffine`` (nothing to fold it into)."""
    affine = _eval_affine(_child(owner, norm_name))
    if affine is None:
        return False
    _replace(owner, norm_name, ChannelAffine(*affine))
    return True


def fold_final_norm(model):
    """Final norm → head through the pooling (mean over tokens or the class token: both linear).

    Without a Dense head (``num_classes=0``) the features are the output, so the norm stays as an
    exact ``ChannelAffine``.
    """
    if isinstance(model.head, nn.Dense):
        fold_norm_into_consumers(model, "norm", [(model, "head")])
    else:
        keep_as_affine(model, "norm")


# ----------------------------------------------------------------------------------- per-family folds
@register_fold(PatchEmbed)
def _fold_patch_embed(embed):
    """Patch-embedding norm → its conv (DeiT's patch embedding has no norm: nothing to do)."""
    fold_norm_into_producer(embed, "proj", "norm")


@register_fold(deit.Block)
def _fold_deit_block(block):
    """norm1 → attn.qkv (softmax or SLA), norm2 → mlp.fc1."""
    fold_norm_into_consumers(block, "norm1", [(block.attn, "qkv")])
    fold_norm_into_consumers(block, "norm2", [(block.mlp, "fc1")])


@register_fold(pvt.Block)
def _fold_pvt_block(block):
    """norm1 → attn.q and attn.kv, or attn.q and the spatial-reduction conv ``sr`` (kernel = stride, no
    padding: exact), whose own norm ``attn.norm`` folds into its output; norm2 → mlp.fc1."""
    attn = block.attn
    if isinstance(attn, pvt.SpatialReductionAttention) and attn.sr_ratio > 1:
        fold_norm_into_consumers(block, "norm1", [(attn, "q"), (attn, "sr")])
        fold_norm_into_producer(attn, "sr", "norm")
    else:
        fold_norm_into_consumers(block, "norm1", [(attn, "q"), (attn, "kv")])
    fold_norm_into_consumers(block, "norm2", [(block.mlp, "fc1")])


@register_fold(cswin.CSWinBlock)
def _fold_cswin_block(block):
    """norm1 → qkv (the block's own projection, shared by the branches), norm2 → mlp.fc1."""
    fold_norm_into_consumers(block, "norm1", [(block, "qkv")])
    fold_norm_into_consumers(block, "norm2", [(block.mlp, "fc1")])


@register_fold(cswin.ConvEmbed)
def _fold_cswin_stem(stem):
    """Stem norm (index 2) → the 7×7 conv (index 0); the padding is on the conv's input: exact."""
    fold_norm_into_producer(stem, "0", "2")


@register_fold(cswin.MergeBlock)
def _fold_cswin_merge(merge):
    """Merge-block norm → its 3×3 stride-2 conv (padding on the conv's input: exact)."""
    fold_norm_into_producer(merge, "conv", "norm")


@register_fold(swin.SwinTransformerBlock)
def _fold_swin_block(block):
    """norm1 → attn.qkv, norm2 → mlp.fc1. Exact: the window partition and cyclic shift only move tokens,
    and Swin here never pads a feature map (sizes that would need padding are refused at construction;
    with padding, zeros entering qkv after the norm would no longer match, SPEC §5.3)."""
    fold_norm_into_consumers(block, "norm1", [(block.attn, "qkv")])
    fold_norm_into_consumers(block, "norm2", [(block.mlp, "fc1")])


@register_fold(swin.PatchMerging)
def _fold_swin_patch_merging(merging):
    """Norm → the bias-free ``reduction``, which gains a bias (W b)."""
    fold_norm_into_consumers(merging, "norm", [(merging, "reduction")])


register_fold(deit.VisionTransformer, swin.SwinTransformer, cswin.CSWinTransformer)(fold_final_norm)
