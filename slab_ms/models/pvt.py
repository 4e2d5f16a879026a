"""PVT v1 with PRepBN (``pvt_*_prepbn``) and SLAB-PVT (``slab_pvt_tiny``: PRepBN + SLA).

Four stages, each: patch embedding (stride 4, then 2) -> its norm -> + the stage's positional
embedding ``pos_embed{s}`` -> blocks. Every norm is PRepBN (LayerNorm eps 1e-6, T = 300,000 in the
released code), including each patch embedding's norm and the spatial-reduction norm ``attn.norm``.
As in the SLAB code there is no class token and no final norm: the classifier sees the mean of the
stage-4 tokens.

Attention per stage: the PRepBN models use PVT's spatial-reduction softmax attention (keys and
values from the map shrunk by a ``sr x sr`` stride-``sr`` conv, sr 8/4/2/1); SLAB-PVT uses
Simplified Linear Attention at full resolution in every stage. ``norm=`` ("ln", "bn", "repbn",
"prepbn") and ``attn=`` ("softmax", "sla") switch any of them to the LayerNorm / softmax PVT
baseline or an ablation; ``attn_type`` takes the official per-stage string ('S' = spatial-reduction
softmax, 'L' = SLA, e.g. "LLSS").

Other input sizes: ``pos_embed{s}`` and the SLA positional encodings are resized bilinearly to the
actual token grid of each stage (as the official PVT detection backbone resizes ``pos_embed``). The
classifier takes heights and widths divisible by 32; the backbone (``features_only=True``) any size: like
the official stride-``p`` patch-embedding convolutions it uses the whole patches of each map and drops the
last rows / columns that do not fill one (pad the image to a multiple of 32 to keep them).

Backbone (``slab_ms.models.backbone``): ``out_indices`` over the four stages (default all), the output of
stage ``s`` is ``block{s}``'s last block; ``frozen_stages=k`` freezes ``patch_embed1`` and stages 1..k
(``patch_embed{s}``, ``pos_embed{s}``, ``block{s}``).
"""
import numpy as np
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer

from ..layers import (DropPath, Mlp, PatchConv2d, PatchEmbed, SimplifiedLinearAttention, attach_prepbn_schedule,
                      check_input, dense, float32_softmax, fold_norm_into_consumers, fold_norm_into_producer,
                      get_norm_layer, merge_heads, register_fold, resize_token_grid, split_heads, to_2tuple)
from ..layers.flops import register_flops, softmax_flops
from ..layers.patch_embed import patch_tokens
from .backbone import BackboneMixin, fold_output_norms
from .registry import build_model, default_cfg, register_model

__all__ = ["PyramidVisionTransformer", "pvt_tiny_prepbn", "pvt_small_prepbn", "pvt_medium_prepbn",
           "slab_pvt_tiny"]

default_cfgs = {
    "pvt_tiny_prepbn": default_cfg("patch_embed1.proj"),
    "pvt_small_prepbn": default_cfg("patch_embed1.proj"),
    "pvt_medium_prepbn": default_cfg("patch_embed1.proj"),
    "slab_pvt_tiny": default_cfg("patch_embed1.proj"),
}

NUM_STAGES = 4


class SpatialReductionAttention(nn.Cell):
    """PVT attention: softmax(q kᵀ / √d) v with k, v from the map reduced by a stride-``sr_ratio`` conv + norm."""

    def __init__(self, dim, num_heads, sr_ratio=1, qkv_bias=True, proj_drop=0.0, norm_layer=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.sr_ratio = sr_ratio
        self.q = dense(dim, dim, has_bias=qkv_bias)
        self.kv = dense(dim, dim * 2, has_bias=qkv_bias)
        self.proj = dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop) if proj_drop > 0 else nn.Identity()
        if sr_ratio > 1:
            self.sr = PatchConv2d(dim, dim, sr_ratio)
            self.norm = norm_layer(dim)

    def construct(self, x, hw):
        c = x.shape[-1]
        q = split_heads(self.q(x), self.num_heads)
        if self.sr_ratio > 1:
            x = self.norm(patch_tokens(self.sr, x, hw)[0])
        k, v = ops.split(self.kv(x), c, axis=-1)
        k, v = split_heads(k, self.num_heads), split_heads(v, self.num_heads)
        attn = float32_softmax(ops.bmm(q * self.scale, k.transpose(0, 2, 1)), v.dtype)
        return self.proj_drop(self.proj(merge_heads(ops.bmm(attn, v), self.num_heads)))


class PVTLinearAttention(SimplifiedLinearAttention):
    """SLA with PVT's projections: q from ``q``, k and v from ``kv`` (no spatial reduction), then ``proj``."""

    def __init__(self, dim, num_heads, grid_size, qkv_bias=True, kernel_size=5, proj_drop=0.0):
        super().__init__(dim, num_heads, grid_size, kernel_size=kernel_size, with_proj=False)
        self.q = dense(dim, dim, has_bias=qkv_bias)
        self.kv = dense(dim, dim * 2, has_bias=qkv_bias)
        self.proj = dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop) if proj_drop > 0 else nn.Identity()

    def construct(self, x, hw):
        k, v = ops.split(self.kv(x), self.dim, axis=-1)
        return self.proj_drop(self.proj(self.attend(self.q(x), k, v, hw)))


class Block(nn.Cell):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim, num_heads, grid_size, mlp_ratio, sr_ratio, qkv_bias=True, drop=0.0, drop_path=0.0,
                 norm_layer=None, attn="sla", kernel_size=5):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if attn == "sla":
            self.attn = PVTLinearAttention(dim, num_heads, grid_size, qkv_bias=qkv_bias, kernel_size=kernel_size,
                                           proj_drop=drop)
        else:
            self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio, qkv_bias=qkv_bias, proj_drop=drop,
                                                  norm_layer=norm_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def construct(self, x, hw):
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _stage_attention(attn, attn_type):
    """Per-stage "softmax" / "sla" from ``attn`` or from the official string ``attn_type`` ('S' / 'L')."""
    if attn_type is None:
        if attn not in ("softmax", "sla"):
            raise ValueError(f"Unknown attn '{attn}'; choose 'softmax' or 'sla' (or pass attn_type='LLSS'-style).")
        return [attn] * NUM_STAGES
    if len(attn_type) != NUM_STAGES or set(attn_type) - set("SL"):
        raise ValueError(f"attn_type must be {NUM_STAGES} letters 'S' (spatial-reduction softmax) or 'L' (SLA), "
                         f"got '{attn_type}'.")
    return ["sla" if t == "L" else "softmax" for t in attn_type]


class PyramidVisionTransformer(BackboneMixin, nn.Cell):
    """PVT v1 in PRepBN / SLAB form (four stages, no class token, no final norm, mean pooling).

    Args (official names): img_size, patch_size (stage 1; later stages use 2), embed_dims, num_heads,
        mlp_ratios, qkv_bias, drop_rate, drop_path_rate, depths, sr_ratios (softmax stages only; SLA
        stages run at full resolution, as the released ``la_sr_ratios='1111'``), kernel_size (SLA
        depth-wise conv), attn_type ('S'/'L' per stage, replaces ``attn`` when given);
        (MindCV names) in_channels, num_classes; norm: "ln" | "bn" | "repbn" | "prepbn";
        attn: "softmax" | "sla" in every stage; prepbn_decay_steps: T; ln_eps: LayerNorm epsilon;
        ``**backbone``: the backbone form (``slab_ms.models.backbone.BackboneOptions``).
    """

    def __init__(self, img_size=224, patch_size=4, in_channels=3, num_classes=1000, embed_dims=(64, 128, 320, 512),
                 num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), qkv_bias=True, drop_rate=0.0, drop_path_rate=0.0,
                 depths=(2, 2, 2, 2), sr_ratios=(8, 4, 2, 1), norm="prepbn", attn="sla", attn_type=None,
                 prepbn_decay_steps=None, ln_eps=1e-6, kernel_size=5, **backbone):
        super().__init__()
        for name, value in (("embed_dims", embed_dims), ("num_heads", num_heads), ("mlp_ratios", mlp_ratios),
                            ("depths", depths), ("sr_ratios", sr_ratios)):
            if len(value) != NUM_STAGES:
                raise ValueError(f"{name} needs one value per stage ({NUM_STAGES}), got {list(value)}.")
        stage_attn = _stage_attention(attn, attn_type)
        img_size = to_2tuple(img_size)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dims[-1]
        self.total_stride = patch_size * 2 ** (NUM_STAGES - 1)
        norm_layer = get_norm_layer(norm, ln_eps=ln_eps, decay_steps=prepbn_decay_steps)

        dpr = np.linspace(0, drop_path_rate, sum(depths)).tolist()
        grid_sizes = []
        stride, in_dim, first = patch_size, in_channels, 0
        for i in range(NUM_STAGES):
            grid = (img_size[0] // stride, img_size[1] // stride)
            grid_sizes.append(grid)
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(patch_size if i == 0 else 2, in_dim, embed_dims[i],
                                                            norm_layer=norm_layer))
            setattr(self, f"pos_embed{i + 1}", Parameter(
                initializer(TruncatedNormal(0.02), (1, grid[0] * grid[1], embed_dims[i])), name=f"pos_embed{i + 1}"))
            setattr(self, f"block{i + 1}", nn.CellList([
                Block(embed_dims[i], num_heads[i], grid, mlp_ratios[i], sr_ratios[i], qkv_bias, drop_rate,
                      dpr[first + j], norm_layer, stage_attn[i], kernel_size) for j in range(depths[i])]))
            stride, in_dim, first = stride * 2, embed_dims[i], first + depths[i]
        self.grid_sizes = tuple(grid_sizes)
        self.pos_drop = nn.Dropout(p=drop_rate) if drop_rate > 0 else nn.Identity()
        stages = [dict(chs=embed_dims[i], reduction=patch_size * 2 ** i, name=f"block{i + 1}")
                  for i in range(NUM_STAGES)]
        groups = [["patch_embed1"]] + [[f"patch_embed{i + 1}", f"pos_embed{i + 1}", f"block{i + 1}"]
                                       for i in range(NUM_STAGES)]
        groups[1].remove("patch_embed1")
        self._init_backbone(backbone, stages, groups, norm_layer, final_norm=False, ln_eps=ln_eps)
        attach_prepbn_schedule(self)

    def no_weight_decay(self):
        """Empty: the reference recipe weight-decays ``pos_embed{s}`` (its exclusion list names a missing cls_token)."""
        return set()

    def _stage(self, x, hw, patch_embed, pos_embed, blocks, grid):
        """One stage: the image (``hw`` None) or the previous stage's tokens on ``hw`` -> tokens and their grid."""
        x, hw = patch_embed(x, hw)
        x = self.pos_drop(x + resize_token_grid(pos_embed, grid, hw))
        for blk in blocks:
            x = blk(x, hw)
        return x, hw

    def forward_stages(self, x, last=3):
        """Image -> ``((tokens (B, N, C), (H, W)), ...)`` of stages 1 .. ``last + 1`` (default: all four; a literal,
        since MindSpore's O1 rewrite re-runs this signature without the module's names)."""
        x, hw = self._stage(x, None, self.patch_embed1, self.pos_embed1, self.block1, self.grid_sizes[0])
        stages = ((x, hw),)
        if last >= 1:
            x, hw = self._stage(x, hw, self.patch_embed2, self.pos_embed2, self.block2, self.grid_sizes[1])
            stages = stages + ((x, hw),)
        if last >= 2:
            x, hw = self._stage(x, hw, self.patch_embed3, self.pos_embed3, self.block3, self.grid_sizes[2])
            stages = stages + ((x, hw),)
        if last >= 3:
            x, hw = self._stage(x, hw, self.patch_embed4, self.pos_embed4, self.block4, self.grid_sizes[3])
            stages = stages + ((x, hw),)
        return stages

    def forward_features(self, x):
        """Image -> stage-4 tokens (B, N, C) (there is no final norm)."""
        check_input(x, self.in_channels, self.total_stride, type(self).__name__)
        return self.forward_stages(x)[-1][0]


@register_flops(SpatialReductionAttention)
def _sra_flops(cell, inputs, output):
    """Softmax over the keys of the map shrunk sr×sr, plus the reduction conv (a patch matmul)."""
    b, n, c = inputs[0].shape
    if cell.sr_ratio == 1:
        return softmax_flops(b, n, n, c)
    keys = n // cell.sr_ratio ** 2
    return softmax_flops(b, n, keys, c) + 2.0 * b * keys * c * c * cell.sr_ratio ** 2


@register_fold(Block)
def _fold_block(block):
    """norm1 → attn.q and attn.kv, or attn.q and the spatial-reduction conv ``sr`` (kernel = stride, no
    padding: exact), whose own norm ``attn.norm`` folds into its output; norm2 → mlp.fc1. PVT v1 has no
    final norm; the patch-embedding norms fold into their convs (``PatchEmbed``'s own fold)."""
    attn = block.attn
    if isinstance(attn, SpatialReductionAttention) and attn.sr_ratio > 1:
        fold_norm_into_consumers(block, "norm1", [(attn, "q"), (attn, "sr")])
        fold_norm_into_producer(attn, "sr", "norm")
    else:
        fold_norm_into_consumers(block, "norm1", [(attn, "q"), (attn, "kv")])
    fold_norm_into_consumers(block, "norm2", [(block.mlp, "fc1")])


@register_fold(PyramidVisionTransformer)
def _fold_model(model):
    """The backbone's output norms become their eval maps (PVT v1 has no final norm)."""
    if model.features_only:
        fold_output_norms(model)


_PVT = dict(patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
            qkv_bias=True, sr_ratios=(8, 4, 2, 1), norm="prepbn", prepbn_decay_steps=300000, ln_eps=1e-6)
# The released models (every norm PRepBN with T = 300,000; the recipes' drop_path: 0.0 / 0.1 / 0.3 / 0.0).
ARCHS = {
    "pvt_tiny_prepbn": dict(_PVT, depths=(2, 2, 2, 2), attn="softmax"),
    "pvt_small_prepbn": dict(_PVT, depths=(3, 4, 6, 3), attn="softmax"),
    "pvt_medium_prepbn": dict(_PVT, depths=(3, 4, 18, 3), attn="softmax"),
    "slab_pvt_tiny": dict(_PVT, depths=(2, 2, 2, 2), attn="sla"),
}
_TEST = dict(image_size=64, embed_dims=(16, 32, 40, 64), num_heads=(1, 2, 5, 8), depths=(1, 1, 1, 1),
             mlp_ratios=(2, 2, 2, 2))
test_configs = {name: _TEST for name in ARCHS}


def _create(name, pretrained, **kwargs):
    return build_model(PyramidVisionTransformer, name, ARCHS[name], pretrained, **kwargs)


@register_model
def pvt_tiny_prepbn(pretrained=False, **kwargs):
    """PVT-Tiny with PRepBN (T = 300,000) and spatial-reduction attention."""
    return _create("pvt_tiny_prepbn", pretrained, **kwargs)


@register_model
def pvt_small_prepbn(pretrained=False, **kwargs):
    """PVT-Small with PRepBN (T = 300,000) and spatial-reduction attention."""
    return _create("pvt_small_prepbn", pretrained, **kwargs)


@register_model
def pvt_medium_prepbn(pretrained=False, **kwargs):
    """PVT-Medium with PRepBN (T = 300,000) and spatial-reduction attention."""
    return _create("pvt_medium_prepbn", pretrained, **kwargs)


@register_model
def slab_pvt_tiny(pretrained=False, **kwargs):
    """SLAB-PVT-Tiny: PRepBN (T = 300,000) + Simplified Linear Attention in every stage."""
    return _create("slab_pvt_tiny", pretrained, **kwargs)
