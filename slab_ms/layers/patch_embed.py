"""Patch embeddings: non-overlapping (Conv2d(kernel = stride = patch) -> tokens -> optional norm) and the strided,
padded convs of the convolutional stems and stage merges."""
import mindspore as ms
from mindspore import nn, ops

from .cpu_kernels import Float32Kernels
from .dense import native_dense
from .fold import fold_norm_into_producer, register_fold
from .helpers import to_2tuple

__all__ = ["PatchEmbed", "PatchConv2d", "UnfoldConv2d", "check_input", "patch_tokens"]


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
    convolution kernel is 30-60x slower for this shape than the equivalent matmul. ``tokens`` returns
    the output as (B, H/p · W/p, out) tokens without going through the (B, out, H/p, W/p) map, and
    ``tokens_from_tokens`` takes a (B, H·W, in) token map as input.
    """

    def __init__(self, in_channels, out_channels, patch_size):
        super().__init__(in_channels, out_channels, patch_size, stride=patch_size, pad_mode="valid", has_bias=True)

    def tokens(self, x):
        """(B, C, H, W) -> (B, H/p · W/p, out) row-major tokens and the grid (H/p, W/p)."""
        b, c, h, w = x.shape
        ph, pw = self.kernel_size
        hp, wp = h // ph, w // pw
        if h != hp * ph or w != wp * pw:  # a valid conv ignores the last rows / columns (a slice is slow: skip it)
            x = x[:, :, :hp * ph, :wp * pw]
        patches = x.reshape(b, c, hp, ph, wp, pw).transpose(0, 2, 4, 1, 3, 5).reshape(b * hp * wp, c * ph * pw)
        weight = self.weight.reshape(self.out_channels, -1).astype(patches.dtype)
        out = ops.matmul(patches, weight.T) + self.bias.astype(patches.dtype)
        return out.reshape(b, hp * wp, self.out_channels), (hp, wp)

    def tokens_from_tokens(self, x, hw):
        """(B, H·W, C) row-major tokens on the grid ``hw`` -> (B, H/p · W/p, out) tokens and (H/p, W/p)."""
        b, _, c = x.shape
        ph, pw = self.kernel_size
        hp, wp = hw[0] // ph, hw[1] // pw
        grid = x.reshape(b, hw[0], hw[1], c)
        if hw[0] != hp * ph or hw[1] != wp * pw:
            grid = grid[:, :hp * ph, :wp * pw]
        patches = grid.reshape(b, hp, ph, wp, pw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b * hp * wp, ph * pw * c)
        weight = self.weight.transpose(0, 2, 3, 1).reshape(self.out_channels, -1)  # patch order (row, col, channel)
        out = ops.matmul(patches, weight.T.astype(patches.dtype)) + self.bias.astype(patches.dtype)
        return out.reshape(b, hp * wp, self.out_channels), (hp, wp)

    def construct(self, x):
        out, (hp, wp) = self.tokens(x)
        return out.reshape(out.shape[0], hp, wp, self.out_channels).transpose(0, 3, 1, 2)


def patch_tokens(conv, x, hw=None):
    """``conv.tokens(x)`` for an image, ``conv.tokens_from_tokens(x, hw)`` for a token map on ``hw``; when MindCV's
    O1 has wrapped the PatchConv2d in a float16 cell without its methods, the wrapped cell's map output as tokens."""
    if isinstance(conv, PatchConv2d):
        return conv.tokens(x) if hw is None else conv.tokens_from_tokens(x, hw)
    if hw is not None:
        b, _, c = x.shape
        x = x.transpose(0, 2, 1).reshape(b, c, hw[0], hw[1])
    out = conv(x)
    b, c, h, w = out.shape
    return out.reshape(b, c, h * w).transpose(0, 2, 1), (h, w)


class UnfoldConv2d(Float32Kernels, nn.Conv2d):
    """Conv2d with zero padding (pad mode "pad") that on float32 CPU tensors runs as ``ops.unfold`` and one native
    Dense product over the (B·L, C·k·k) patches: the same parameters and outputs as ``nn.Conv2d``. MindSpore 2.10's
    CPU Conv2D took 73-101 ms per call for each of CSwin's strided convs whatever its size (oneDNN's convolution on
    plain NCHW tensors), the unfold and the product 5-33 ms at batch 8. ``use_standard_ops`` switches back."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, pad_mode="pad", padding=padding,
                         has_bias=True)
        self.unfold_padding = padding
        self.native_kernel = native_dense(has_bias=True)

    def construct(self, x):
        if self.native_kernel is None or x.dtype != ms.float32:
            return super().construct(x)
        b, _, h, w = x.shape
        (kh, kw), (sh, sw), p = self.kernel_size, self.stride, self.unfold_padding
        ho, wo = (h + 2 * p - kh) // sh + 1, (w + 2 * p - kw) // sw + 1
        cols = ops.unfold(x, self.kernel_size, 1, p, self.stride)  # (B, C·kh·kw, Ho·Wo), C-major as the weight
        cols = cols.transpose(0, 2, 1).reshape(b * ho * wo, -1)
        y = self.native_kernel(cols, self.weight.reshape(self.out_channels, -1), self.bias)
        return y.reshape(b, ho, wo, -1).transpose(0, 3, 1, 2)


class PatchEmbed(nn.Cell):
    """Image (B, C, H, W), or a (B, H·W, C) token map with its grid ``hw``, -> tokens (B, H/p · W/p, D) and
    the token grid (H/p, W/p)."""

    def __init__(self, patch_size=16, in_channels=3, embed_dim=768, norm_layer=None):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.proj = PatchConv2d(in_channels, embed_dim, self.patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def construct(self, x, hw=None):
        x, hw = patch_tokens(self.proj, x, hw)
        return self.norm(x), hw


@register_fold(PatchEmbed)
def _fold_patch_embed(embed):
    """Patch-embedding norm → its conv (DeiT's patch embedding has no norm: nothing to do)."""
    fold_norm_into_producer(embed, "proj", "norm")
