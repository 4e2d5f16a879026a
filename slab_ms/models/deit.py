"""DeiT with PRepBN (``deit_*_prepbn``) and SLAB-DeiT (``slab_deit_*``: PRepBN + SLA).

The PRepBN models keep DeiT's class token and softmax attention; the SLAB models drop the class
token, use Simplified Linear Attention and average the tokens. ``norm=`` ("ln", "bn", "repbn",
"prepbn") and ``attn=`` ("softmax", "sla") switch any of them to the LayerNorm / softmax baseline
or an ablation. Other input sizes work: the positional embeddings are resized bilinearly.

Backbone (``features_only=True``, ``slab_ms.models.backbone``), ViTDet style: ``out_indices`` picks blocks
(default the last one; e.g. (3, 5, 7, 11) for depth 12, negative indices count from the end) and each output
is that block's patch tokens (the class token left out) as one stride-``patch_size`` map after its output
norm; any input size runs on its whole patches. ``frozen_stages=k`` freezes the patch embedding, the position
embedding (and class token) and the first k blocks.
"""
import numpy as np
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer

from ..layers import (Attention, DropPath, Mlp, PatchEmbed, SimplifiedLinearAttention, attach_prepbn_schedule,
                      check_input, fold_norm_into_consumers, get_norm_layer, register_fold,
                      resize_token_grid, to_2tuple)
from .backbone import BackboneMixin, fold_head_or_output_norms
from ..weights.official import drop_keys
from .registry import build_model, default_cfg, register_model

__all__ = ["VisionTransformer", "deit_tiny_prepbn", "deit_small_prepbn", "slab_deit_tiny", "slab_deit_small"]

default_cfgs = {
    "deit_tiny_prepbn": default_cfg("patch_embed.proj"),
    "deit_small_prepbn": default_cfg("patch_embed.proj"),
    "slab_deit_tiny": default_cfg("patch_embed.proj"),
    "slab_deit_small": default_cfg("patch_embed.proj"),
}


class Block(nn.Cell):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim, num_heads, grid_size, mlp_ratio=4.0, qkv_bias=True, drop=0.0, drop_path=0.0,
                 norm_layer=None, attn="sla", kernel_size=5):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if attn == "sla":
            self.attn = SimplifiedLinearAttention(dim, num_heads, grid_size, qkv_bias=qkv_bias,
                                                  kernel_size=kernel_size, proj_drop=drop)
        else:
            self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def construct(self, x, hw):
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(BackboneMixin, nn.Cell):
    """DeiT backbone in PRepBN / SLAB form.

    Args (official names): img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, qkv_bias,
        drop_rate, drop_path_rate; (MindCV names) in_channels, num_classes;
        norm: "ln" | "bn" | "repbn" | "prepbn" | "pbn" (γ·LN + (1 − γ)·BN); attn: "softmax" | "sla";
        global_pool: "token" (class token) or "avg"; default "token" for softmax, "avg" for SLA;
        prepbn_decay_steps: T of the PRepBN schedule (norm='prepbn' only); ln_eps: LayerNorm epsilon;
        kernel_size: depth-wise conv kernel of SLA (0: no depth-wise conv);
        ``**backbone``: the backbone form (``slab_ms.models.backbone.BackboneOptions``; here the stages are the
        blocks).
    """

    def __init__(self, img_size=224, patch_size=16, in_channels=3, num_classes=1000, embed_dim=192, depth=12,
                 num_heads=3, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0, drop_path_rate=0.0, norm="prepbn",
                 attn="sla", global_pool=None, prepbn_decay_steps=None, ln_eps=1e-6, kernel_size=5, **backbone):
        super().__init__()
        if attn not in ("softmax", "sla"):
            raise ValueError(f"Unknown attn '{attn}'; choose 'softmax' or 'sla'.")
        global_pool = global_pool or ("avg" if attn == "sla" else "token")
        if global_pool not in ("token", "avg"):
            raise ValueError(f"Unknown global_pool '{global_pool}'; choose 'token' or 'avg'.")
        if attn == "sla" and global_pool == "token":
            raise ValueError("SLA attends over a square token grid; a class token needs attn='softmax'.")
        img_size, patch_size = to_2tuple(img_size), to_2tuple(patch_size)
        self.in_channels = in_channels
        self.patch_size = patch_size[0]
        self.grid_size = (img_size[0] // patch_size[0], img_size[1] // patch_size[1])
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.global_pool = global_pool
        norm_layer = get_norm_layer(norm, ln_eps=ln_eps, decay_steps=prepbn_decay_steps)

        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_prefix_tokens = 1 if global_pool == "token" else 0
        if self.num_prefix_tokens:
            self.cls_token = Parameter(initializer(TruncatedNormal(0.02), (1, 1, embed_dim)), name="cls_token")
        self.pos_embed = Parameter(initializer(TruncatedNormal(0.02), (1, num_patches + self.num_prefix_tokens,
                                                                       embed_dim)), name="pos_embed")
        self.pos_drop = nn.Dropout(p=drop_rate) if drop_rate > 0 else nn.Identity()
        dpr = np.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.CellList([
            Block(embed_dim, num_heads, self.grid_size, mlp_ratio, qkv_bias, drop_rate, dpr[i], norm_layer, attn,
                  kernel_size) for i in range(depth)])
        outputs = [dict(chs=embed_dim, reduction=self.patch_size, name=f"blocks.{i}") for i in range(depth)]
        stem = ["patch_embed", "pos_embed"] + (["cls_token"] if self.num_prefix_tokens else [])
        self._init_backbone(backbone, outputs, [stem] + [[f"blocks.{i}"] for i in range(depth)], norm_layer,
                            default_out=(depth - 1,), what="block", ln_eps=ln_eps)
        attach_prepbn_schedule(self)

    def no_weight_decay(self):
        return {name for name in ("pos_embed", "cls_token") if hasattr(self, name)}

    def _pos_embed(self, x, hw):
        pos = self.pos_embed
        if self.num_prefix_tokens:
            grid = resize_token_grid(pos[:, 1:], self.grid_size, hw)
            pos = ops.concat((pos[:, :1], grid), axis=1)
            x = ops.concat((ops.broadcast_to(self.cls_token, (x.shape[0], -1, -1)), x), axis=1)
        else:
            pos = resize_token_grid(pos, self.grid_size, hw)
        return self.pos_drop(x + pos)

    def forward_features(self, x):
        """Image -> normalised tokens (B, N, D)."""
        check_input(x, self.in_channels, self.patch_size, type(self).__name__)
        x, hw = self.patch_embed(x)
        x = self._pos_embed(x, hw)
        for blk in self.blocks:
            x = blk(x, hw)
        return self.norm(x)

    def forward_stages(self, x, last):
        """Image -> ``((patch tokens (B, N, C), (H, W)), ...)`` after blocks 0 .. ``last`` (backbone form)."""
        x, hw = self.patch_embed(x)
        x = self._pos_embed(x, hw)
        stages = ()
        for i, blk in enumerate(self.blocks):
            if i <= last:
                x = blk(x, hw)
                stages = stages + ((x[:, self.num_prefix_tokens:] if self.num_prefix_tokens else x, hw),)
        return stages


@register_fold(Block)
def _fold_block(block):
    """norm1 → attn.qkv (softmax or SLA), norm2 → mlp.fc1."""
    fold_norm_into_consumers(block, "norm1", [(block.attn, "qkv")])
    fold_norm_into_consumers(block, "norm2", [(block.mlp, "fc1")])


register_fold(VisionTransformer)(fold_head_or_output_norms)


def checkpoint_filter(state_dict, model):
    """The SLAB-DeiT reference keeps an unused class token; it is dropped: ``(kept, notes, [])``."""
    if model.num_prefix_tokens:
        return state_dict, [], []
    return (*drop_keys(state_dict, [(r"^cls_token$", "dead parameter of SLAB-DeiT (no class token is used)")]), [])


_TINY = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0, qkv_bias=True)
_SMALL = dict(_TINY, embed_dim=384, num_heads=6)
# The released models: norm, attention and the γ schedule's T (deit_t_prepbn is RepBN throughout).
ARCHS = {
    "deit_tiny_prepbn": dict(_TINY, norm="repbn", attn="softmax"),
    "deit_small_prepbn": dict(_SMALL, norm="prepbn", attn="softmax", prepbn_decay_steps=300000),
    "slab_deit_tiny": dict(_TINY, norm="prepbn", attn="sla", prepbn_decay_steps=60000),
    "slab_deit_small": dict(_SMALL, norm="prepbn", attn="sla", prepbn_decay_steps=60000),
}
_TEST = dict(image_size=56, patch_size=4, embed_dim=48, depth=2, num_heads=3)
test_configs = {name: _TEST for name in ARCHS}


def _create(name, pretrained, **kwargs):
    return build_model(VisionTransformer, name, ARCHS[name], pretrained, **kwargs)


@register_model
def deit_tiny_prepbn(pretrained=False, **kwargs):
    """DeiT-Tiny with RepBN (the released deit_t_prepbn uses RepBN throughout: 0 decay steps)."""
    return _create("deit_tiny_prepbn", pretrained, **kwargs)


@register_model
def deit_small_prepbn(pretrained=False, **kwargs):
    """DeiT-Small with PRepBN (T = 300,000 steps in the released code)."""
    return _create("deit_small_prepbn", pretrained, **kwargs)


@register_model
def slab_deit_tiny(pretrained=False, **kwargs):
    """SLAB-DeiT-Tiny: PRepBN (T = 60,000) + Simplified Linear Attention, mean pooling."""
    return _create("slab_deit_tiny", pretrained, **kwargs)


@register_model
def slab_deit_small(pretrained=False, **kwargs):
    """SLAB-DeiT-Small: PRepBN (T = 60,000) + Simplified Linear Attention, mean pooling."""
    return _create("slab_deit_small", pretrained, **kwargs)
