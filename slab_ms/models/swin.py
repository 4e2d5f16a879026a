"""Swin Transformer with PRepBN (``swin_tiny_prepbn``) and SLAB-Swin (``slab_swin_tiny``, ``slab_swin_small``).

``swin_tiny_prepbn`` is the standard Swin-T (shifted-window softmax attention with relative
position bias) with every normalization replaced by RepBN. SLAB-Swin uses PRepBN everywhere and
Simplified Linear Attention in the 'L' stages of its ``attn_type`` layout ("LLSS"): an 'L' block
runs SLA on windows of ``window_size`` (56) and an 'S' block softmax attention on 7×7 windows
(12×12 when ``window_size`` > 56). As in Swin, a window as large as the stage's feature map becomes
the whole map with no shift, so at 224×224 stages 1–2 run global SLA. Like the reference, SLA on
shifted windows (only possible at larger inputs) does not use the shift mask.

``attn=`` picks which reference model the arguments mean: "softmax" is ``SwinTransformer`` (every
stage shifted-window softmax, ``window_size`` the window, default 7: the Swin-T baseline), "sla"
is ``SlabSwinTransformer`` (``attn_type`` default "LLSS", ``window_size`` the SLA window, default
56). ``norm=`` ("ln", "bn", "repbn", "prepbn") switches the normalization.

Input size: the classifier's stage resolutions, effective windows, shifts, attention masks and SLA
positional encodings are fixed at construction from ``img_size``, as in the reference. Any size works
if every stage resolution is even (for patch merging) and a multiple of its window (or at most the
window); 224 and 448 do for all three models. A different size at run time is an error naming
the size the model was built for. Checkpoints carry SLA positional encodings sized for their
resolution, so a model built for another size needs its own weights.

Backbone (``features_only=True``, ``slab_ms.models.backbone``): any input size, as the official
detection backbones: the image is padded to the patch size, each block pads its normalised map to
its window grid and shifts every second block by half the window (masks for the padded grid are
computed per input shape when a graph is compiled), odd maps are padded before patch merging; each
block keeps the window it was built with at ``img_size``. Outputs: ``layers.{s}``'s blocks, strides
``patch_size``·2^s; ``frozen_stages=k`` freezes ``patch_embed`` and ``layers[0..k-1]`` (with their patch
merging, as the official code).
"""
import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer
from mindspore.ops import constexpr

from ..layers import (DropPath, Mlp, PatchEmbed, SimplifiedLinearAttention, attach_prepbn_schedule, check_input,
                      dense, float32_softmax, fold_norm_into_consumers, get_norm_layer, register_fold, to_2tuple)
from ..layers.fold import zero_preimage
from ..layers.flops import register_flops, softmax_flops
from .backbone import BackboneMixin, fold_head_or_output_norms, pad_grid
from ..weights.official import drop_keys
from .registry import build_model, default_cfg, register_model

__all__ = ["SwinTransformer", "swin_tiny_prepbn", "slab_swin_tiny", "slab_swin_small"]

default_cfgs = {
    "swin_tiny_prepbn": default_cfg("patch_embed.proj"),
    "slab_swin_tiny": default_cfg("patch_embed.proj"),
    "slab_swin_small": default_cfg("patch_embed.proj"),
}

MASK_VALUE = -100.0  # added to attention logits between tokens of different regions of a shifted window


# ------------------------------------------------------------------------------ windows and the shift
def window_partition(x, window_size):
    """(B, H, W, C) -> (B·nW, ws·ws, C): windows row-major within each image, images batch-major."""
    b, h, w, c = x.shape
    if h == window_size and w == window_size:
        return x.reshape(b, h * w, c)
    x = x.reshape(b, h // window_size, window_size, w // window_size, window_size, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window_size * window_size, c)


def window_reverse(windows, window_size, h, w):
    """Inverse of ``window_partition``: (B·nW, ws·ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window_size) * (w // window_size))
    x = windows.reshape(b, h // window_size, w // window_size, window_size, window_size, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def cyclic_shift(x, shift):
    """Roll (B, H, W, C) by ``shift`` along H and W (element i moves to i + shift, wrapping around)."""
    h, w = x.shape[1], x.shape[2]
    sh, sw = shift % h, shift % w
    x = ops.concat((x[:, h - sh:], x[:, :h - sh]), axis=1)
    return ops.concat((x[:, :, w - sw:], x[:, :, :w - sw]), axis=2)


def window_order(resolution, window_size, shift):
    """(H·W,) int32: the row-major token that lands at each position of ``window_partition(cyclic_shift(x, −shift))``.

    Gathering the tokens in this order does the shift and the partition in one pass (one Gather instead
    of four slices, two concats and a transpose: ~3x faster on MindSpore's CPU backend); gathering in
    the inverse order (``np.argsort``) undoes both.
    """
    h, w = resolution
    tokens = Tensor(np.arange(h * w, dtype=np.int32).reshape(1, h, w, 1))
    if shift:
        tokens = cyclic_shift(tokens, -shift)
    return window_partition(tokens, window_size).asnumpy().reshape(-1)


def relative_position_index(window_size):
    """(N, N) index into the ((2W−1)², heads) bias table for the N = W² tokens of a window."""
    coords = np.stack(np.meshgrid(np.arange(window_size), np.arange(window_size), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window_size - 1)
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


def shifted_window_mask(resolution, window_size, shift):
    """(nW, N, N) additive mask of a cyclically shifted map: 0 within a region, −100 across regions."""
    h, w = resolution
    region = np.zeros((h, w), np.float32)
    bands = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    for i, rows in enumerate(bands):
        for j, cols in enumerate(bands):
            region[rows, cols] = 3 * i + j
    windows = region.reshape(h // window_size, window_size, w // window_size, window_size)
    windows = windows.transpose(0, 2, 1, 3).reshape(-1, window_size * window_size)
    return np.where(windows[:, None, :] != windows[:, :, None], MASK_VALUE, 0.0).astype(np.float32)


@constexpr
def padded_shift_mask(resolution, window_size, shift):
    """``shifted_window_mask`` of a (padded) map as a Tensor, computed once per shape when a graph is compiled."""
    return Tensor(shifted_window_mask(resolution, window_size, shift))


# ------------------------------------------------------------------------------------------- cells
class WindowAttention(nn.Cell):
    """Window multi-head softmax attention with a learned relative position bias (Swin's W-MSA)."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = Parameter(
            initializer(TruncatedNormal(0.02), ((2 * window_size - 1) ** 2, num_heads)),
            name="relative_position_bias_table")
        self.relative_position_index = Tensor(relative_position_index(window_size).reshape(-1), ms.int32)
        self.qkv = dense(dim, dim * 3, has_bias=qkv_bias)
        self.proj = dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop) if proj_drop > 0 else nn.Identity()

    def construct(self, x, mask=None):
        """x: (B·nW, N, C) windows; mask: (nW, N, N) or None. Returns (B·nW, N, C)."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).transpose(2, 0, 3, 1, 4)
        q, k, v = ops.unstack(qkv, 0)  # indexing qkv[0] is a StridedSlice: ~15x slower on MindSpore's CPU
        attn = ops.matmul(q * self.scale, k.swapaxes(-2, -1)).astype(ms.float32)  # bias, mask, softmax: float32
        bias = ops.gather(self.relative_position_bias_table.astype(ms.float32), self.relative_position_index, 0)
        attn = attn + bias.reshape(n, n, self.num_heads).transpose(2, 0, 1).expand_dims(0)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.reshape(b // num_windows, num_windows, self.num_heads, n, n) + mask.astype(ms.float32).reshape(
                1, num_windows, 1, n, n)
            attn = attn.reshape(b, self.num_heads, n, n)
        x = ops.matmul(float32_softmax(attn, v.dtype), v).transpose(0, 2, 1, 3).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Cell):
    """x + attn(norm1(x)) on (shifted) windows, then x + mlp(norm2(x)).

    ``kind`` is "S" (softmax window attention) or "L" (SLA per window). A window at least as large
    as the feature map becomes the whole map, without shift.
    """

    def __init__(self, dim, input_resolution, num_heads, window_size, shift_size, kind, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop=0.0, drop_path=0.0, norm_layer=None, kernel_size=5):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        shifted = shift_size > 0
        if min(self.input_resolution) <= window_size:
            window_size, shift_size = min(self.input_resolution), 0
        # The backbone form (any map size) keeps this window and shifts every second block by half of it, as
        # the official detection backbones do; ``pad_value`` is what the padded tokens enter qkv as (0 after
        # norm1; its fold makes it norm1's zero preimage).
        self.feature_shift = window_size // 2 if shifted else 0
        self.pad_value = Tensor(np.zeros((dim,), np.float32))
        h, w = self.input_resolution
        if h % window_size or w % window_size:
            raise ValueError(f"a {h}x{w} feature map cannot be split into {window_size}x{window_size} windows; "
                             "choose an image size whose stage resolutions are multiples of the windows.")
        self.window_size, self.shift_size, self.kind = window_size, shift_size, kind
        self.norm1 = norm_layer(dim)
        if kind == "L":
            self.attn = SimplifiedLinearAttention(dim, num_heads, (window_size, window_size), qkv_bias=qkv_bias,
                                                  kernel_size=kernel_size, proj_drop=drop)
            self.attn_mask = None  # the reference's SLA ignores the shift mask
        else:
            self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, proj_drop=drop)
            self.attn_mask = (Tensor(shifted_window_mask(self.input_resolution, window_size, shift_size))
                              if shift_size else None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        # Shift + window partition (and their inverse) as one token gather; None: one window, no shift.
        self.window_index = self.window_inverse = None
        if (window_size, window_size) != self.input_resolution or shift_size:
            order = window_order(self.input_resolution, window_size, shift_size)
            self.window_index = Tensor(order, ms.int32)
            self.window_inverse = Tensor(np.argsort(order).astype(np.int32))

    def construct(self, x, hw=None):
        """x: (B, H·W, C) tokens on the built resolution (``hw`` None) or on any ``hw`` grid (backbone form)."""
        if hw is not None and (tuple(hw) != self.input_resolution or self.feature_shift != self.shift_size):
            x = x + self.drop_path(self._padded_attention(self.norm1(x), hw))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        b, n, c = x.shape
        ws = self.window_size
        y = self.norm1(x)
        if self.window_index is not None:
            y = ops.gather(y, self.window_index, 1)
        windows = y.reshape(-1, ws * ws, c)
        if self.kind == "L":
            windows = self.attn(windows, (ws, ws))
        else:
            windows = self.attn(windows, self.attn_mask)
        y = windows.reshape(b, n, c)
        if self.window_inverse is not None:
            y = ops.gather(y, self.window_inverse, 1)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _padded_attention(self, y, hw):
        """Window attention on normalised tokens of any ``hw`` grid, as the official detection backbones: pad
        to a multiple of the window, shift by ``feature_shift`` (softmax windows masked per region of the
        padded map), attend, undo the shift, crop."""
        b, _, c = y.shape
        h, w = hw
        ws, shift = self.window_size, self.feature_shift
        y, (hp, wp) = pad_grid(y.reshape(b, h, w, c), hw, ws, self.pad_value)
        if shift:
            y = cyclic_shift(y, -shift)
        windows = window_partition(y, ws)
        if self.kind == "L":
            windows = self.attn(windows, (ws, ws))
        elif shift:
            windows = self.attn(windows, padded_shift_mask((hp, wp), ws, shift))
        else:
            windows = self.attn(windows)
        y = window_reverse(windows, ws, hp, wp)
        if shift:
            y = cyclic_shift(y, shift)
        if (hp, wp) != (h, w):
            y = y[:, :h, :w]
        return y.reshape(b, h * w, c)


class PatchMerging(nn.Cell):
    """2×2 neighbourhood -> channels [x(0::2,0::2), x(1::2,0::2), x(0::2,1::2), x(1::2,1::2)], norm, Dense 4C->2C."""

    def __init__(self, input_resolution, dim, norm_layer):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.norm = norm_layer(4 * dim)
        self.reduction = dense(4 * dim, 2 * dim, has_bias=False)

    def construct(self, x, hw=None):
        """Tokens on the built resolution, or (backbone form) on ``hw``: a map of odd size is zero-padded at the
        bottom / right first, as in the official detection backbones; then the merged grid is returned too."""
        b, _, c = x.shape
        h, w = self.input_resolution if hw is None else hw
        if h % 2 or w % 2:
            x, (h, w) = pad_grid(x.reshape(b, h, w, c), (h, w), 2)
        # (b, row/2, row%2, col/2, col%2, c) -> channel blocks ordered by (col%2, row%2)
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, (h // 2) * (w // 2), 4 * c)
        x = self.reduction(self.norm(x))
        return x if hw is None else (x, (h // 2, w // 2))


class BasicLayer(nn.Cell):
    """One stage: blocks alternating unshifted / shifted windows, then an optional PatchMerging."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, kind, mlp_ratio, qkv_bias, qk_scale,
                 drop, drop_path, norm_layer, kernel_size, downsample):
        super().__init__()
        self.blocks = nn.CellList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                                 kind, mlp_ratio, qkv_bias, qk_scale, drop, drop_path[i], norm_layer, kernel_size)
            for i in range(depth)])
        self.downsample = PatchMerging(input_resolution, dim, norm_layer) if downsample else None

    def construct(self, x):
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x

    def forward_backbone(self, x, hw):
        """Tokens on any ``hw`` grid -> (stage output, input of the next stage, its grid)."""
        for blk in self.blocks:
            x = blk(x, hw)
        if self.downsample is None:
            return x, x, hw
        down, down_hw = self.downsample(x, hw)
        return x, down, down_hw


def _stage_windows(attn, attn_type, window_size, num_stages):
    """Per-stage ("S"|"L", window) following the reference model that ``attn`` stands for."""
    if attn == "softmax":
        if attn_type is not None and set(attn_type) != {"S"}:
            raise ValueError(f"attn='softmax' is Swin with softmax attention in every stage; attn_type "
                             f"'{attn_type}' asks for SLA stages: pass attn='sla'.")
        return [("S", window_size or 7)] * num_stages
    if attn != "sla":
        raise ValueError(f"Unknown attn '{attn}'; choose 'softmax' or 'sla'.")
    attn_type = attn_type or "LLSS"
    if len(attn_type) != num_stages or set(attn_type) - {"L", "S"}:
        raise ValueError(f"attn_type must be one 'L' (SLA) or 'S' (softmax) per stage ({num_stages} stages), "
                         f"got '{attn_type}'.")
    la_window = window_size or 56
    softmax_window = 7 if la_window <= 56 else 12
    return [(kind, la_window if kind == "L" else softmax_window) for kind in attn_type]


class SwinTransformer(BackboneMixin, nn.Cell):
    """Swin backbone in PRepBN / SLAB form.

    Args (official names): img_size, patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio,
        qkv_bias, qk_scale, drop_rate, drop_path_rate, patch_norm, attn_type ("L"/"S" per stage, SLA
        models), kernel_size (SLA depth-wise conv); ape and use_checkpoint
        (only False is supported); fused_window_process and focusing_factor (accepted, no effect:
        a CUDA kernel switch and a dead SLA argument of the reference).
        (MindCV names) in_channels, num_classes; norm: "ln" | "bn" | "repbn" | "prepbn";
        attn: "softmax" | "sla" (see the module doc for how it sets the meaning of window_size);
        prepbn_decay_steps: T of the PRepBN schedule; ln_eps: LayerNorm epsilon;
        ``**backbone``: the backbone form (``slab_ms.models.backbone.BackboneOptions``).
    """

    def __init__(self, img_size=224, patch_size=4, in_channels=3, num_classes=1000, embed_dim=96,
                 depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=None, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop_rate=0.0, drop_path_rate=0.0, patch_norm=True, norm="prepbn", attn="sla",
                 attn_type=None, kernel_size=5, prepbn_decay_steps=None, ln_eps=1e-5, ape=False,
                 use_checkpoint=False, fused_window_process=False, focusing_factor=None, **backbone):
        super().__init__()
        del fused_window_process, focusing_factor  # no effect, see the class doc
        if ape or use_checkpoint:
            raise ValueError("ape=True (absolute position embedding) and use_checkpoint=True are not used by any "
                             "SLAB model and are not supported.")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} need one entry per stage.")
        num_stages = len(depths)
        stages = _stage_windows(attn, attn_type, window_size, num_stages)
        self.img_size, self.patch_size = to_2tuple(img_size), patch_size
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_features = int(embed_dim * 2 ** (num_stages - 1))
        multiple = patch_size * 2 ** (num_stages - 1)
        if self.img_size[0] % multiple or self.img_size[1] % multiple:
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size · 2^(stages−1) = {multiple} "
                             "(patch embedding, then a 2x2 patch merging after every stage but the last).")
        grid = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        norm_layer = get_norm_layer(norm, ln_eps=ln_eps, decay_steps=prepbn_decay_steps)

        self.patch_embed = PatchEmbed(patch_size, self.in_channels, embed_dim, norm_layer if patch_norm else None)
        self.pos_drop = nn.Dropout(p=drop_rate) if drop_rate > 0 else nn.Identity()
        dpr = np.linspace(0, drop_path_rate, sum(depths)).tolist()
        layers = []
        for s, ((kind, window), depth) in enumerate(zip(stages, depths)):
            first = sum(depths[:s])
            layers.append(BasicLayer(
                embed_dim * 2 ** s, (grid[0] // 2 ** s, grid[1] // 2 ** s), depth, num_heads[s], window, kind,
                mlp_ratio, qkv_bias, qk_scale, drop_rate, dpr[first:first + depth], norm_layer, kernel_size,
                downsample=s < num_stages - 1))
        self.layers = nn.CellList(layers)
        stages = [dict(chs=embed_dim * 2 ** s, reduction=patch_size * 2 ** s, name=f"layers.{s}")
                  for s in range(num_stages)]
        groups = [["patch_embed"]] + [[f"layers.{s}"] for s in range(num_stages)]
        self._init_backbone(backbone, stages, groups, norm_layer, ln_eps=ln_eps)
        attach_prepbn_schedule(self)

    def no_weight_decay(self):
        """Relative position bias tables (the reference's no-decay keyword); SLA encodings are decayed."""
        return {name for name, _ in self.parameters_and_names() if name.endswith("relative_position_bias_table")}

    def forward_features(self, x):
        """Image -> normalised last-stage tokens (B, N, C). An image of another size than the model was built for
        runs as in the backbone form (padded to whole patches and windows, SLA encodings resized), as the official
        detection backbones run any size."""
        check_input(x, self.in_channels, 1, type(self).__name__)
        if (x.shape[2], x.shape[3]) != self.img_size:
            return self.norm(self.forward_stages(x, len(self.layers) - 1)[-1][0])
        x = self.patch_embed(x)[0]
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_stages(self, x, last):
        """Image of any size -> ``((tokens (B, N, C), (H, W)), ...)`` of stages 0 .. ``last``: the image is
        zero-padded to a multiple of the patch size and every stage runs on its own grid (backbone form)."""
        b, c, h, w = x.shape
        p = self.patch_size
        hp, wp = -(-h // p) * p, -(-w // p) * p
        if (hp, wp) != (h, w):
            x = ops.pad(x, (0, wp - w, 0, hp - h))
        x, hw = self.patch_embed(x)
        x = self.pos_drop(x)
        stages = ()
        for s, layer in enumerate(self.layers):
            if s <= last:
                out, x, next_hw = layer.forward_backbone(x, hw)
                stages = stages + ((out, hw),)
                hw = next_hw
        return stages


@register_flops(WindowAttention)
def _window_flops(cell, inputs, output):
    b, n, c = inputs[0].shape  # windows × tokens per window
    return softmax_flops(b, n, n, c)


@register_fold(SwinTransformerBlock)
def _fold_block(block):
    """norm1 → attn.qkv, norm2 → mlp.fc1. Exact: the window partition and cyclic shift only move tokens, and
    the tokens that pad a map (zeros after norm1) become norm1's zero preimage before the folded qkv."""
    pad_value = zero_preimage(block.norm1)
    if fold_norm_into_consumers(block, "norm1", [(block.attn, "qkv")]):
        block.pad_value = Tensor(pad_value)
    fold_norm_into_consumers(block, "norm2", [(block.mlp, "fc1")])


@register_fold(PatchMerging)
def _fold_patch_merging(merging):
    """Norm → the bias-free ``reduction``, which gains a bias (W b)."""
    fold_norm_into_consumers(merging, "norm", [(merging, "reduction")])


register_fold(SwinTransformer)(fold_head_or_output_norms)


def checkpoint_filter(state_dict, model):
    """Relative-position indices and shift masks are buffers of the reference; they are recomputed here:
    ``(kept, notes, [])``."""
    return (*drop_keys(state_dict, [(r"(^|\.)relative_position_index$", "recomputed by the model"),
                                    (r"(^|\.)attn_mask$", "recomputed by the model")]), [])


_TINY = dict(patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), mlp_ratio=4.0, qkv_bias=True,
             ln_eps=1e-5)
_SMALL = dict(_TINY, depths=(2, 2, 18, 2))
# The released models: swin_t_prepbn is RepBN throughout; SLAB-Swin is PRepBN with T = 60,000.
ARCHS = {
    "swin_tiny_prepbn": dict(_TINY, norm="repbn", attn="softmax"),
    "slab_swin_tiny": dict(_TINY, norm="prepbn", attn="sla", prepbn_decay_steps=60000),
    "slab_swin_small": dict(_SMALL, norm="prepbn", attn="sla", prepbn_decay_steps=60000),
}
_TEST_SLAB = dict(image_size=56, patch_size=2, embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=14,
                  attn_type="LS")
test_configs = {
    "swin_tiny_prepbn": dict(image_size=32, patch_size=4, embed_dim=8, depths=(2, 1), num_heads=(1, 2), window_size=4),
    "slab_swin_tiny": _TEST_SLAB,
    "slab_swin_small": _TEST_SLAB,
}


def _create(name, pretrained, **kwargs):
    return build_model(SwinTransformer, name, ARCHS[name], pretrained, **kwargs)


@register_model
def swin_tiny_prepbn(pretrained=False, **kwargs):
    """Swin-T with RepBN (the released swin_t_prepbn) and shifted-window softmax attention."""
    return _create("swin_tiny_prepbn", pretrained, **kwargs)


@register_model
def slab_swin_tiny(pretrained=False, **kwargs):
    """SLAB-Swin-T: PRepBN (T = 60,000), SLA in stages 1-2 and shifted 7x7 softmax windows in stages 3-4."""
    return _create("slab_swin_tiny", pretrained, **kwargs)


@register_model
def slab_swin_small(pretrained=False, **kwargs):
    """SLAB-Swin-S: PRepBN (T = 60,000), SLA in stages 1-2 and shifted 7x7 softmax windows in stages 3-4."""
    return _create("slab_swin_small", pretrained, **kwargs)
