"""PRepBN for an existing MindCV transformer: ``prepbnify(model, decay_steps=..., warmup_steps=0)``.

Every ``nn.LayerNorm`` of the model becomes a PRepBN (its LayerNorm side keeps the LayerNorm's epsilon and
learned affine) and all of them read one new :class:`~slab_ms.layers.PRepBNSchedule` owned by the model, so
``train.py``'s train step or :class:`~slab_ms.training.GammaDecay` drives γ from 1 (the original LayerNorm
model) to 0 (pure RepBN), as the paper does when it re-normalizes DeiT, PVT and Swin.

For deployment this module registers the folds of MindCV's ViT, Swin, PVT and PVTv2 cells, so
``reparameterize_model`` folds each norm into the Dense or Conv next to it. A norm with nothing linear next
to it that can absorb it exactly (PVTv2's stage norms, whose maps enter a zero-padded 3×3 conv) becomes an
exact per-channel affine (logged); so does the norm before MindCV's 'same'-padded spatial-reduction convs.
:func:`prepbnify` returns the names of the norms it replaced. MindCV's PVT v1 runs on MindSpore 2.10 with the
position-embedding shim of ``slab_ms._compat``.
"""
import logging

from mindspore import nn
from mindcv.models import pvt, pvtv2, swintransformer, vit

from .layers.fold import (can_absorb, fold_final_norm, fold_norm_into_consumers, fold_norm_into_producer,
                          keep_as_affine, register_fold, replace_cell)
from .layers.norm import PRepBN, attach_prepbn_schedule
from .layers.prepbn_schedule import PRepBNSchedule

__all__ = ["prepbnify"]

_logger = logging.getLogger(__name__)


def prepbnify(model, decay_steps, warmup_steps=0):
    """Replace every LayerNorm of ``model`` by a PRepBN sharing one γ schedule of T = ``decay_steps``; returns
    the names of the replaced cells. The model computes what it computed before while γ = 1 (training,
    step < warm-up + 1); its eval form is RepBN."""
    if getattr(model, "compile_cache", None):
        raise ValueError(f"{type(model).__name__} already ran in GRAPH_MODE, and MindSpore would keep running its "
                         "compiled graph with the LayerNorms; call prepbnify on the model before its first call "
                         "(or on a newly built one).")
    schedule = PRepBNSchedule(decay_steps, warmup_steps)
    replaced = []
    for owner_name, owner in list(model.cells_and_names()):
        for name, child in list(owner.name_cells().items()):
            if type(child) is not nn.LayerNorm:  # pylint: disable=unidiomatic-typecheck
                continue
            shape = child.normalized_shape
            shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
            if len(shape) != 1:
                raise ValueError(f"{owner_name}.{name}: PRepBN normalizes the channel axis of (B, N, C) tokens; "
                                 f"this LayerNorm normalizes over {shape}")
            norm = PRepBN(shape[0], schedule, ln_eps=child.epsilon)
            norm.norm1.gamma.set_data(child.gamma.data.copy())
            norm.norm1.beta.set_data(child.beta.data.copy())
            replace_cell(owner, name, norm)
            replaced.append(f"{owner_name}.{name}" if owner_name else name)
    if not replaced:
        raise ValueError(f"{type(model).__name__} has no nn.LayerNorm to replace")
    for name, param in model.parameters_and_names():
        param.name = name  # the new cells were built outside the model, with short names
    attach_prepbn_schedule(model)
    return replaced


def _fold_pre_norm_block(attn_consumers):
    """The fold of a pre-norm block: norm1 → the attention's input projections, norm2 → mlp.fc1."""
    def fold(block):
        fold_norm_into_consumers(block, "norm1", [(block.attn, name) for name in attn_consumers])
        fold_norm_into_consumers(block, "norm2", [(block.mlp, "fc1")])
    return fold


register_fold(vit.Block)(_fold_pre_norm_block(["qkv"]))
register_fold(swintransformer.SwinTransformerBlock)(_fold_pre_norm_block(["q", "k", "v"]))
register_fold(vit.VisionTransformer, pvt.PyramidVisionTransformer)(fold_final_norm)


@register_fold(swintransformer.SwinTransformer)
def _fold_swin_final_norm(model):
    fold_final_norm(model, head="classifier")


@register_fold(swintransformer.PatchMerging)
def _fold_swin_patch_merging(merging):
    fold_norm_into_consumers(merging, "norm", [(merging, "reduction")])


@register_fold(swintransformer.PatchEmbed, pvt.PatchEmbed, pvtv2.OverlapPatchEmbed)
def _fold_patch_embed(embed):
    """Norm after the patch conv → the conv (any padding is on the conv's input: exact)."""
    if "norm" in embed.name_cells():  # Swin without patch_norm has none
        fold_norm_into_producer(embed, "proj", "norm")


@register_fold(pvt.Block, pvtv2.Block)
def _fold_pvt_block(block):
    """norm1 → q and kv, or q and the spatial-reduction conv when it never pads (PVTv2 'linear': a 1×1 conv
    after an average pooling, which commutes with a per-channel affine), whose own norm folds into its output;
    norm2 → fc1. MindCV's kernel = stride sr convs pad ('same') maps their stride does not divide, so there
    norm1 stays an exact per-channel affine."""
    attn = block.attn
    if "sr" in attn.name_cells():
        if can_absorb(attn.sr):
            fold_norm_into_consumers(block, "norm1", [(attn, "q"), (attn, "sr")])
        elif keep_as_affine(block, "norm1"):
            _logger.info("%s: norm1 kept as an exact per-channel affine (the 'same'-padded sr conv cannot absorb "
                         "it)", type(block).__name__)
        fold_norm_into_producer(attn, "sr", "norm")
    else:
        fold_norm_into_consumers(block, "norm1", [(attn, "q"), (attn, "kv")])
    fold_norm_into_consumers(block, "norm2", [(block.mlp, "fc1")])


@register_fold(pvtv2.PyramidVisionTransformerV2)
def _fold_pvtv2_stage_norms(model):
    """The last stage norm → head through the mean over tokens; the others feed a zero-padded 3×3 conv (the next
    patch embedding), which cannot absorb them: they stay as exact per-channel affines."""
    last = len(model.norm_list) - 1
    for index in range(last):
        if keep_as_affine(model.norm_list, str(index)):
            _logger.info("norm_list.%d kept as an exact per-channel affine (a zero-padded conv follows)", index)
    if isinstance(model.head, nn.Dense):
        fold_norm_into_consumers(model.norm_list, str(last), [(model, "head")])
    else:
        keep_as_affine(model.norm_list, str(last))
