"""Non-overlapping patch embedding: Conv2d(kernel = stride = patch) -> tokens -> optional norm."""
from mindspore import nn, ops

from .fold import fold_norm_into_producer, register_fold
from .helpers import to_2tuple

__all__ = ["PatchEmbed", "PatchConv2d", "check_input"]


def check_input(x, in_channels, multiple, model_name):
    """Raise one clear error for an input of the wrong rank, channel count or size."""
    if x.ndim != 4:
        raise ValueError(f"{model_name} expects images of shape (B, C, H, W), got shape {x.shape}.")
    if x.shape[1] != in_channels:
        raise ValueError(f"{model_name} was built for {in_channels} input channels but the input has "
                         f"{x.shape[1]} (shape {x.shape}); pass in_channels={x.shape[1]} or fix the data.")
    if x.shape[2] % multiple or x.shape[3] % multiple:
        raise ValueError(f"{model_name} needs an image height and width divisible by {multiple}, got "
                         f"{x.shape[2]}x{x.shape[3]}; resize or crop the input.")


class PatchConv2d(nn.Conv2d):
    """Conv2d with kernel = stride and no padding, computed as one matmul over flattened patches.

    Same parameters (``weight`` (out, in, p, p), ``bias``) and outputs as ``nn.Conv2d``; MindSpore's CPU
    convolution kernel is 30-60x slower for this shape than the equivalent matmul.
    """

    def __init__(self, in_channels, out_channels, patch_size):
        super().__init__(in_channels, out_channels, patch_size, stride=patch_size, pad_mode="valid", has_bias=True)

    def construct(self, x):
        b, c, h, w = x.shape
        ph, pw = self.kernel_size
        hp, wp = h // ph, w // pw
        patches = x[:, :, :hp * ph, :wp * pw].reshape(b, c, hp, ph, wp, pw).transpose(0, 2, 4, 1, 3, 5)
        out = ops.matmul(patches.reshape(b * hp * wp, c * ph * pw), self.weight.reshape(self.out_channels, -1).T)
        out = out + self.bias
        return out.reshape(b, hp, wp, self.out_channels).transpose(0, 3, 1, 2)


class PatchEmbed(nn.Cell):
    """Image (B, C, H, W) -> tokens (B, H/p · W/p, D) and the token grid (H/p, W/p)."""

    def __init__(self, patch_size=16, in_channels=3, embed_dim=768, norm_layer=None):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.proj = PatchConv2d(in_channels, embed_dim, self.patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def construct(self, x):
        x = self.proj(x)
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w).transpose(0, 2, 1)
        return self.norm(x), (h, w)


@register_fold(PatchEmbed)
def _fold_patch_embed(embed):
    """Patch-embedding norm → its conv (DeiT's patch embedding has no norm: nothing to do)."""
    fold_norm_into_producer(embed, "proj", "norm")
