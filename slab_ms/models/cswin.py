"""SLAB-CSwin (``slab_cswin_tiny``): the CSWin Transformer with PRepBN and, in its 'L' stages, SLA.

CSWin attends inside cross-shaped windows: a block splits its channels and heads in two halves,
one attending within vertical stripes (full height, ``split`` columns wide), the other within
horizontal stripes; each branch adds LePE, a 3×3 depth-wise convolution of v (``get_v``). A stage
whose map equals its stripe width, and the last stage, use one branch over the whole map.
SLAB replaces every LayerNorm by PRepBN (LN eps 1e-5, T = 120,000 steps) and, in the stages marked
'L' of ``attn_type`` ("LLSS" for the released model), the softmax by Simplified Linear Attention on
the same windows (window sizes ``la_split_size`` = 56-28-14-7 at 224: global in stages 1-2), keeping
LePE next to SLA's own depth-wise convolution.

``attn="softmax"`` gives the CSWin baseline (LePE softmax stripes everywhere); ``norm=`` switches
the norm ("ln", "bn", "repbn", "prepbn"). The reference's unused ``attns.*.scale`` parameter is not
created (the converter drops it).

Backbone (``features_only=True``, ``slab_ms.models.backbone``): the output of stage ``s`` is ``stage{s}``'s
last block, at strides 4-8-16-32; ``frozen_stages=k`` freezes the stem and stages 1..k (each with the merge
block before it). Any input size runs: a two-branch stage whose map its stripes do not tile pads the
normalised map at the bottom / right to a multiple of the stripe width before ``qkv`` and crops after
``proj``, as the official CSWin detection / segmentation backbones do (SLAB released no CSwin detection code);
the classifier keeps refusing such sizes.

Other input sizes: ``img_size`` fixes the block layout (one or two branches per stage; by default
the 'L' stages attend over their whole map, as the released 56-28-14-7 does at 224). At run time
the windows follow the feature map (whole map, or stripes of full height / width) and SLA's
positional encoding is resized bilinearly, so a 224 model also runs at e.g. 112, 336 or 448. The
input must give every two-branch stage a map that its stripe width divides; otherwise one
ValueError names the input sizes that work.
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from ..layers import (DropPath, Mlp, SimplifiedLinearAttention, UnfoldConv2d, attach_prepbn_schedule, check_input,
                      dense, float32_softmax, fold_norm_into_consumers, fold_norm_into_producer, get_norm_layer,
                      merge_heads, register_fold, split_heads, to_2tuple)
from ..layers.attention import depthwise_conv_tokens
from ..layers.cpu_kernels import kernel
from ..layers.fold import zero_preimage
from ..layers.flops import register_flops, sla_flops, softmax_flops
from .backbone import BackboneMixin, crop_tokens, fold_head_or_output_norms, pad_grid
from ..weights.official import drop_keys
from .registry import build_model, default_cfg, register_model

__all__ = ["CSWinTransformer", "slab_cswin_tiny"]

default_cfgs = {
    "slab_cswin_tiny": default_cfg("stage1_conv_embed.0"),
}

_STEM_CONV = dict(kernel=7, stride=4, padding=2)
_MERGE_CONV = dict(kernel=3, stride=2, padding=1)
WHOLE, VERTICAL, HORIZONTAL = "whole", "vertical", "horizontal"


def _conv_out(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def stage_grids(image_hw):
    """Feature-map (H, W) of each of the four stages for an input image of ``image_hw``."""
    grid = tuple(_conv_out(s, **_STEM_CONV) for s in image_hw)
    grids = [grid]
    for _ in range(3):
        grid = tuple(_conv_out(s, **_MERGE_CONV) for s in grid)
        grids.append(grid)
    return grids


def stripe_window(stripe, split, hw):
    """(H_sp, W_sp) of a branch on an ``hw`` map: the whole map, or stripes ``split`` wide / high."""
    if stripe == VERTICAL:
        return (hw[0], split)
    if stripe == HORIZONTAL:
        return (split, hw[1])
    return (hw[0], hw[1])


def to_windows(x, hw, window):
    """(B, H·W, C) row-major tokens -> (B·nW, H_sp·W_sp, C), windows in row-major order."""
    if window[0] == hw[0] and window[1] == hw[1]:
        return x
    b, _, c = x.shape
    x = x.reshape(b, hw[0] // window[0], window[0], hw[1] // window[1], window[1], c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window[0] * window[1], c)


def from_windows(x, hw, window):
    """Inverse of ``to_windows``: (B·nW, H_sp·W_sp, C) -> (B, H·W, C)."""
    if window[0] == hw[0] and window[1] == hw[1]:
        return x
    c = x.shape[-1]
    x = x.reshape(-1, hw[0] // window[0], hw[1] // window[1], window[0], window[1], c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, hw[0] * hw[1], c)


def tokens_to_grid(x, hw):
    """(B, H·W, C) -> (B, C, H, W)."""
    b, _, c = x.shape
    return x.transpose(0, 2, 1).reshape(b, c, hw[0], hw[1])


def grid_to_tokens(x):
    """(B, C, H, W) -> (B, H·W, C)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).transpose(0, 2, 1)


class LePEConv(nn.Conv2d):
    """LePE: a 3×3 depth-wise convolution (with bias) over all ``dim`` channels of a branch, applied to its
    windowed values (B', N, C) on the ``window`` grid and returned as tokens. In eval mode on CPU one native
    pass over the tokens (``cpu_kernels``), without the NCHW round trip of the Conv2d."""

    def __init__(self, dim):
        super().__init__(dim, dim, 3, group=dim, pad_mode="pad", padding=1, has_bias=True)
        self.native_kernel = kernel("DepthwiseConvTokens", depthwise_conv_tokens)

    def construct(self, v, window=None):
        if window is None:  # a (B', C, H, W) map: the call of MindCV's O1 wrapper, which passes one argument
            return super().construct(v)
        if self.native_kernel is not None and not self.training:
            b, n, c = v.shape
            out = self.native_kernel(v.astype(ms.float32).reshape(b, window[0], window[1], 1, c),
                                     self.weight.astype(ms.float32), self.bias.astype(ms.float32))
            return out.reshape(b, n, c).astype(v.dtype)
        return grid_to_tokens(super().construct(tokens_to_grid(v, window)))


def lepe(conv, v, window):
    """``conv(v, window)`` of a LePEConv; through MindCV's O1 wrapper (one argument), the conv of v's window grid."""
    if isinstance(conv, LePEConv):
        return conv(v, window)
    return grid_to_tokens(conv(tokens_to_grid(v, window)))


class LePEAttention(nn.Cell):
    """CSWin branch: softmax attention (q·hd^-0.5) within stripes, plus LePE of v.

    Args:
        dim: channels of this branch (C, or C/2 in two-branch blocks).
        num_heads: heads of this branch.
        stripe: "whole", "vertical" (H_sp = H, W_sp = split) or "horizontal" (H_sp = split, W_sp = W).
        split: stripe width.
    """

    def __init__(self, dim, num_heads, stripe, split):
        super().__init__()
        self.num_heads = num_heads
        self.stripe = stripe
        self.split = split
        self.scale = (dim // num_heads) ** -0.5
        self.get_v = LePEConv(dim)

    def construct(self, q, k, v, hw):
        window = stripe_window(self.stripe, self.split, hw)
        q, k, v = to_windows(q, hw, window), to_windows(k, hw, window), to_windows(v, hw, window)
        positional = lepe(self.get_v, v, window)
        q = split_heads(q * self.scale, self.num_heads)
        k = split_heads(k, self.num_heads)
        v = split_heads(v, self.num_heads)
        attn = float32_softmax(ops.bmm(q, k.transpose(0, 2, 1)), v.dtype)
        out = merge_heads(ops.bmm(attn, v), self.num_heads) + positional
        return from_windows(out, hw, window)


class SLALePEAttention(SimplifiedLinearAttention):
    """SLAB-CSwin 'L' branch: SLA within the windows (q, k, v from the block's qkv), plus LePE of v.

    The positional encoding P has the window shape at ``grid_size`` (the stage map at construction);
    SLA's own depth-wise convolution runs on each window. The block's ``proj`` follows.
    """

    def __init__(self, dim, num_heads, stripe, split, grid_size, kernel_size=5):
        super().__init__(dim, num_heads, stripe_window(stripe, split, grid_size), kernel_size=kernel_size,
                         with_proj=False)
        self.stripe = stripe
        self.split = split
        self.get_v = LePEConv(dim)

    def construct(self, q, k, v, hw):
        window = stripe_window(self.stripe, self.split, hw)
        q, k, v = to_windows(q, hw, window), to_windows(k, hw, window), to_windows(v, hw, window)
        out = self.attend(q, k, v, window) + lepe(self.get_v, v, window)
        return from_windows(out, hw, window)


class CSWinBlock(nn.Cell):
    """x + proj(branches(qkv(norm1(x)))), then x + mlp(norm2(x)).

    One branch over the whole map (all channels and heads), or two on half the channels and heads
    each: vertical stripes on channels [0, C/2), horizontal stripes on [C/2, C).
    """

    def __init__(self, dim, num_heads, grid_size, split, single_branch, linear, mlp_ratio=4.0, qkv_bias=True,
                 drop=0.0, drop_path=0.0, norm_layer=None, kernel_size=5):
        super().__init__()
        self.dim = dim
        self.qkv = dense(dim, dim * 3, has_bias=qkv_bias)
        self.norm1 = norm_layer(dim)
        stripes = (WHOLE,) if single_branch else (VERTICAL, HORIZONTAL)
        self.num_branches = len(stripes)
        branch_dim, branch_heads = dim // self.num_branches, num_heads // self.num_branches
        if linear:
            branches = [SLALePEAttention(branch_dim, branch_heads, s, split, grid_size, kernel_size) for s in stripes]
        else:
            branches = [LePEAttention(branch_dim, branch_heads, s, split) for s in stripes]
        self.attns = nn.CellList(branches)
        self.proj = dense(dim, dim)
        self.proj_drop = nn.Dropout(p=drop) if drop > 0 else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.norm2 = norm_layer(dim)
        self.stripe_split = 0 if single_branch else split
        self.pad_value = Tensor(np.zeros((dim,), np.float32))  # padded tokens before qkv (see _fold_block)

    def construct(self, x, hw):
        y = self.norm1(x)
        full_hw = hw
        if self.stripe_split and (hw[0] % self.stripe_split or hw[1] % self.stripe_split):
            b, _, c = y.shape
            y, hw = pad_grid(y.reshape(b, full_hw[0], full_hw[1], c), full_hw, self.stripe_split, self.pad_value)
            y = y.reshape(b, hw[0] * hw[1], c)
        q, k, v = ops.split(self.qkv(y), self.dim, axis=-1)
        if self.num_branches == 1:
            out = self.attns[0](q, k, v, hw)
        else:
            # ops.split, not slicing: MindSpore's CPU StridedSlice is ~15x slower than Split
            half = self.dim // 2
            q0, q1 = ops.split(q, half, axis=-1)
            k0, k1 = ops.split(k, half, axis=-1)
            v0, v1 = ops.split(v, half, axis=-1)
            out = ops.concat((self.attns[0](q0, k0, v0, hw), self.attns[1](q1, k1, v1, hw)), axis=-1)
        out = crop_tokens(out, hw, full_hw)
        x = x + self.drop_path(self.proj_drop(self.proj(out)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class GridToTokens(nn.Cell):
    """Parameter-free (B, C, H, W) -> (B, H·W, C) (index 1 of the stem, like the reference)."""

    def construct(self, x):
        return grid_to_tokens(x)


class ConvEmbed(nn.SequentialCell):
    """Stem: Conv2d(k7, s4, p2) -> tokens -> norm; returns the tokens and their (H, W) grid."""

    def __init__(self, in_channels, dim, norm_layer):
        conv = UnfoldConv2d(in_channels, dim, _STEM_CONV["kernel"], _STEM_CONV["stride"], _STEM_CONV["padding"])
        super().__init__([conv, GridToTokens(), norm_layer(dim)])

    def construct(self, x):
        x = self.cell_list[0](x)
        hw = x.shape[2:]
        return self.cell_list[2](self.cell_list[1](x)), hw


class MergeBlock(nn.Cell):
    """Between stages: Conv2d(C, 2C, k3, s2, p1) on the token map -> tokens -> norm."""

    def __init__(self, dim, dim_out, norm_layer):
        super().__init__()
        self.conv = UnfoldConv2d(dim, dim_out, _MERGE_CONV["kernel"], _MERGE_CONV["stride"], _MERGE_CONV["padding"])
        self.norm = norm_layer(dim_out)

    def construct(self, x, hw):
        x = self.conv(tokens_to_grid(x, hw))
        hw = x.shape[2:]
        return self.norm(grid_to_tokens(x)), hw


def _parse_splits(value):
    if isinstance(value, str):
        return [int(s) for s in value.split("-")]
    return [int(s) for s in value]


class CSWinTransformer(BackboneMixin, nn.Cell):
    """CSWin backbone in SLAB form.

    Args (official names): img_size, patch_size (must be 4: the stem is a 7×7 stride-4 conv), num_classes,
        embed_dim, depth, split_size (stripe widths of 'S' stages), num_heads, mlp_ratio, qkv_bias, drop_rate,
        drop_path_rate, la_split_size (window sizes of 'L' stages, "56-28-14-7" or a list; default: each stage's
        whole map at img_size, which is "56-28-14-7" at 224), attn_type (one 'L'/'S' per stage; default "LLSS" for
        attn="sla", "SSSS" for attn="softmax"), kernel_size (SLA depth-wise conv), focusing_factor (accepted for
        compatibility; the reference never uses it either);
        (MindCV names) in_channels; norm: "ln" | "bn" | "repbn" | "prepbn"; attn: "sla" | "softmax";
        prepbn_decay_steps: T of the PRepBN schedule; ln_eps: LayerNorm epsilon;
        ``**backbone``: the backbone form (``slab_ms.models.backbone.BackboneOptions``).
    """

    def __init__(self, img_size=224, patch_size=4, in_channels=3, num_classes=1000, embed_dim=64,
                 depth=(2, 4, 18, 1), split_size=(1, 2, 7, 7), num_heads=(2, 4, 8, 16), mlp_ratio=4.0,
                 qkv_bias=True, drop_rate=0.0, drop_path_rate=0.0, la_split_size=None, attn_type=None,
                 kernel_size=5, focusing_factor=3, norm="prepbn", attn="sla", prepbn_decay_steps=None,
                 ln_eps=1e-5, **backbone):
        super().__init__()
        if attn not in ("softmax", "sla"):
            raise ValueError(f"Unknown attn '{attn}'; choose 'softmax' or 'sla'.")
        attn_type = attn_type or ("LLSS" if attn == "sla" else "SSSS")
        if len(attn_type) != 4 or set(attn_type) - {"L", "S"}:
            raise ValueError(f"attn_type must be four letters 'L' (SLA) or 'S' (softmax), got '{attn_type}'.")
        if attn == "softmax" and "L" in attn_type:
            raise ValueError(f"attn='softmax' contradicts attn_type '{attn_type}'; use attn='sla'.")
        if patch_size != _STEM_CONV["stride"]:
            raise ValueError(f"patch_size must be {_STEM_CONV['stride']}: the CSWin stem is a fixed 7x7 "
                             f"stride-4 convolution, got {patch_size}.")
        self.img_size = to_2tuple(img_size)
        grids = stage_grids(self.img_size)
        if la_split_size is None:
            la_split_size = [g[0] for g in grids]
        split_size, la_split_size = _parse_splits(split_size), _parse_splits(la_split_size)
        if not len(depth) == len(num_heads) == len(split_size) == len(la_split_size) == 4:
            raise ValueError("depth, num_heads, split_size and la_split_size need one entry per stage (4).")
        self.in_channels = in_channels
        self.num_classes = num_classes
        dims = [embed_dim * 2 ** i for i in range(4)]
        self.num_features = dims[-1]
        norm_layer = get_norm_layer(norm, ln_eps=ln_eps, decay_steps=prepbn_decay_steps)

        splits = [la if kind == "L" else s for kind, la, s in zip(attn_type, la_split_size, split_size)]
        single = [i == 3 or grids[i][0] == grids[i][1] == splits[i] for i in range(4)]
        # Stripe width each stage's map must be divisible by (0: one branch over the whole map).
        self.stripe_splits = tuple(0 if single[i] else splits[i] for i in range(4))
        for i, split in enumerate(self.stripe_splits):
            if split and (grids[i][0] % split or grids[i][1] % split):
                raise ValueError(f"img_size {self.img_size} gives stage {i + 1} a {grids[i][0]}x{grids[i][1]} map; a "
                                 f"stage whose map is not its split size attends in stripes of that width "
                                 f"({split}), which must divide the map. Pass split_size / la_split_size that fit "
                                 f"(released model: img_size 224, split_size 1-2-7-7, la_split_size 56-28-14-7).")
            if split and (num_heads[i] % 2 or dims[i] % 2):
                raise ValueError(f"stage {i + 1} attends in two stripe branches of half the heads each and needs "
                                 f"an even number of heads, got {num_heads[i]}.")
        self.supported_sizes = self._supported_sizes()

        dpr = np.linspace(0, drop_path_rate, sum(depth)).tolist()
        stages = []
        for i in range(4):
            first = sum(depth[:i])
            stages.append(nn.CellList([
                CSWinBlock(dims[i], num_heads[i], grids[i], splits[i], single[i], attn_type[i] == "L", mlp_ratio,
                           qkv_bias, drop_rate, dpr[first + j], norm_layer, kernel_size) for j in range(depth[i])]))
        self.stage1_conv_embed = ConvEmbed(self.in_channels, embed_dim, norm_layer)
        self.stage1 = stages[0]
        self.merge1 = MergeBlock(dims[0], dims[1], norm_layer)
        self.stage2 = stages[1]
        self.merge2 = MergeBlock(dims[1], dims[2], norm_layer)
        self.stage3 = stages[2]
        self.merge3 = MergeBlock(dims[2], dims[3], norm_layer)
        self.stage4 = stages[3]
        outputs = [dict(chs=dims[i], reduction=4 * 2 ** i, name=f"stage{i + 1}") for i in range(4)]
        groups = [["stage1_conv_embed"], ["stage1"], ["merge1", "stage2"], ["merge2", "stage3"], ["merge3", "stage4"]]
        self._init_backbone(backbone, outputs, groups, norm_layer, ln_eps=ln_eps)
        attach_prepbn_schedule(self)

    def _tiles(self, grids):
        return all(not s or (g[0] % s == 0 and g[1] % s == 0) for g, s in zip(grids, self.stripe_splits))

    def _supported_sizes(self, count=5):
        top = 4 * max(self.img_size)
        sizes = [s for s in range(16, top + 1, 16) if self._tiles(stage_grids((s, s)))][:count]
        return ", ".join(str(s) for s in sizes) + " (height and width each)"

    def no_weight_decay(self):
        """None: like the reference, the SLA positional encodings are weight-decayed."""
        return set()

    def _stage(self, blocks, index, x, hw, image_hw):
        split = self.stripe_splits[index]
        if split and (hw[0] % split or hw[1] % split) and not self.features_only:
            raise ValueError(f"CSWinTransformer: a {image_hw[0]}x{image_hw[1]} input gives stage {index + 1} a "
                             f"{hw[0]}x{hw[1]} map, which stripes of width {split} do not tile; input sizes that "
                             f"work: {self.supported_sizes}.")
        for blk in blocks:
            x = blk(x, hw)
        return x

    def forward_features(self, x):
        """Image -> normalised stage-4 tokens (B, N, C)."""
        check_input(x, self.in_channels, 1, type(self).__name__)
        image_hw = x.shape[2:]
        x, hw = self.stage1_conv_embed(x)
        x = self._stage(self.stage1, 0, x, hw, image_hw)
        x, hw = self.merge1(x, hw)
        x = self._stage(self.stage2, 1, x, hw, image_hw)
        x, hw = self.merge2(x, hw)
        x = self._stage(self.stage3, 2, x, hw, image_hw)
        x, hw = self.merge3(x, hw)
        x = self._stage(self.stage4, 3, x, hw, image_hw)
        return self.norm(x)

    def forward_stages(self, x, last):
        """Image -> ``((tokens (B, N, C), (H, W)), ...)`` of stages 1 .. ``last + 1`` (backbone form)."""
        image_hw = x.shape[2:]
        x, hw = self.stage1_conv_embed(x)
        x = self._stage(self.stage1, 0, x, hw, image_hw)
        stages = ((x, hw),)
        if last >= 1:
            x, hw = self.merge1(x, hw)
            x = self._stage(self.stage2, 1, x, hw, image_hw)
            stages = stages + ((x, hw),)
        if last >= 2:
            x, hw = self.merge2(x, hw)
            x = self._stage(self.stage3, 2, x, hw, image_hw)
            stages = stages + ((x, hw),)
        if last >= 3:
            x, hw = self.merge3(x, hw)
            x = self._stage(self.stage4, 3, x, hw, image_hw)
            stages = stages + ((x, hw),)
        return stages


@register_flops(LePEAttention)
def _lepe_flops(cell, inputs, output):
    b, n, c = inputs[0].shape
    window = stripe_window(cell.stripe, cell.split, inputs[3])
    return softmax_flops(b, n, window[0] * window[1], c)


@register_flops(SLALePEAttention)
def _sla_lepe_flops(cell, inputs, output):
    b, n, c = inputs[0].shape
    window = stripe_window(cell.stripe, cell.split, inputs[3])
    return sla_flops(cell, b, n, c, window[0] * window[1])


@register_fold(CSWinBlock)
def _fold_block(block):
    """norm1 → qkv (the block's own projection, shared by the branches), norm2 → mlp.fc1; the tokens that pad
    a map (zeros after norm1) become norm1's zero preimage before the folded qkv."""
    pad_value = zero_preimage(block.norm1)
    if fold_norm_into_consumers(block, "norm1", [(block, "qkv")]):
        block.pad_value = Tensor(pad_value)
    fold_norm_into_consumers(block, "norm2", [(block.mlp, "fc1")])


@register_fold(ConvEmbed)
def _fold_stem(stem):
    """Stem norm (index 2) → the 7×7 conv (index 0); the padding is on the conv's input: exact."""
    fold_norm_into_producer(stem, "0", "2")


@register_fold(MergeBlock)
def _fold_merge(merge):
    """Merge-block norm → its 3×3 stride-2 conv (padding on the conv's input: exact)."""
    fold_norm_into_producer(merge, "conv", "norm")


register_fold(CSWinTransformer)(fold_head_or_output_norms)


def checkpoint_filter(state_dict, model):
    """The reference's SLA keeps an unused ``scale`` per stripe branch; it is dropped: ``(kept, notes, [])``."""
    return (*drop_keys(state_dict, [(r"(^|\.)attns\.\d+\.scale$", "dead parameter of SLAB-CSwin's SLA")]), [])


# la_split_size left to its default: SLA over the whole map of stages 1-2 (56-28-14-7 at 224).
ARCHS = {
    "slab_cswin_tiny": dict(embed_dim=64, depth=(2, 4, 18, 1), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7),
                            mlp_ratio=4.0, qkv_bias=True, kernel_size=5, norm="prepbn", attn="sla",
                            prepbn_decay_steps=120000),
}
test_configs = {
    "slab_cswin_tiny": dict(image_size=64, embed_dim=8, depth=(1, 1, 1, 1), split_size=(1, 2, 2, 2),
                            la_split_size="16-4-4-2", num_heads=(1, 2, 4, 8)),
}


@register_model
def slab_cswin_tiny(pretrained=False, **kwargs):
    """SLAB-CSwin-T: PRepBN (T = 120,000) + SLA in stages 1-2 ('LLSS'); the recipe trains with drop_path 0.1."""
    return build_model(CSWinTransformer, "slab_cswin_tiny", ARCHS["slab_cswin_tiny"], pretrained, **kwargs)
