"""Simplified Linear Attention (paper Eq. 8) and the softmax attention baseline.

SLA for one image or window, with q, k, v of shape (B, N, C), C = heads · head_dim:

    k ← k + P                                   (learnable positional encoding, on k only)
    out_i = Σ_j (ReLU(q_i)·ReLU(k_j)) v_j / (ReLU(q_i)·Σ_j ReLU(k_j) + 1e-6)  +  DWC(v)

The association order is chosen by cost: (K^T V) first when N > head_dim, (Q K^T) first
otherwise; both give the same numbers. The normaliser and products run in float32 even under
mixed precision. One depth-wise convolution ``dwc`` over head_dim channels is shared by all heads.
``SimplifiedLinearAttention.attend`` is the single implementation; the PVT, Swin and CSwin
attentions call it.
"""
import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from .helpers import dense, to_2tuple

__all__ = ["Attention", "SimplifiedLinearAttention", "split_heads", "merge_heads", "resize_token_grid"]



def split_heads(x, num_heads):
    """(B, N, h·d) -> (B·h, N, d), batch-major then head (``b n (h c) -> (b h) n c``)."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(0, 2, 1, 3).reshape(b * num_heads, n, c // num_heads)


def merge_heads(x, num_heads):
    """(B·h, N, d) -> (B, N, h·d)."""
    bh, n, d = x.shape
    return x.reshape(bh // num_heads, num_heads, n, d).transpose(0, 2, 1, 3).reshape(bh // num_heads, n, num_heads * d)


def resize_token_grid(tokens, src_hw, dst_hw):
    """Bilinearly resize a (1, h·w, C) token map laid out row-major on ``src_hw`` to ``dst_hw``."""
    if tuple(src_hw) == tuple(dst_hw):
        return tokens
    _, _, c = tokens.shape
    grid = tokens.reshape(1, src_hw[0], src_hw[1], c).transpose(0, 3, 1, 2)
    grid = ops.interpolate(grid, size=tuple(dst_hw), mode="bilinear", align_corners=False)
    return grid.transpose(0, 2, 3, 1).reshape(1, dst_hw[0] * dst_hw[1], c)


class Attention(nn.Cell):
    """Multi-head softmax self-attention (the DeiT / ViT baseline)."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = dense(dim, dim * 3, has_bias=qkv_bias)
        self.attn_drop = nn.Dropout(p=attn_drop) if attn_drop > 0 else nn.Identity()
        self.proj = dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop) if proj_drop > 0 else nn.Identity()

    def construct(self, x, hw=None):
        q, k, v = ops.split(self.qkv(x), x.shape[-1], axis=-1)
        q, k, v = split_heads(q, self.num_heads), split_heads(k, self.num_heads), split_heads(v, self.num_heads)
        attn = ops.softmax(ops.bmm(q * self.scale, k.transpose(0, 2, 1)), axis=-1)
        x = merge_heads(ops.bmm(self.attn_drop(attn), v), self.num_heads)
        return self.proj_drop(self.proj(x))


class SimplifiedLinearAttention(nn.Cell):
    """SLA over a token grid (global attention of SLAB-DeiT, SLAB-PVT and SLAB-Swin's 'L' stages).

    Args:
        dim: channels C.
        num_heads: heads h (head_dim = C / h).
        grid_size: (H, W) token grid the positional encoding P (1, H·W, C) is laid out on.
            Other grids at run time get P bilinearly resized.
        qkv_bias: bias of the qkv projection.
        kernel_size: kernel of the depth-wise convolution on v (5 in every released model).
        proj_drop: dropout after the output projection.
        with_proj: build ``qkv`` and ``proj`` Dense layers (subclasses that project differently
            pass False).
    """

    def __init__(self, dim, num_heads, grid_size, qkv_bias=True, kernel_size=5, proj_drop=0.0, with_proj=True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}.")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.grid_size = to_2tuple(grid_size)
        self.eps = 1e-6  # added to the normaliser, as in the reference (an attribute: MindSpore's AMP
        # rewrite of a cell does not see module-level constants)
        num_tokens = self.grid_size[0] * self.grid_size[1]
        if with_proj:
            self.qkv = dense(dim, dim * 3, has_bias=qkv_bias)
        self.positional_encoding = Parameter(Tensor(np.zeros((1, num_tokens, dim), np.float32)),
                                             name="positional_encoding")
        self.dwc = nn.Conv2d(self.head_dim, self.head_dim, kernel_size, group=self.head_dim, pad_mode="pad",
                             padding=kernel_size // 2, has_bias=True)
        if with_proj:
            self.proj = dense(dim, dim)
            self.proj_drop = nn.Dropout(p=proj_drop) if proj_drop > 0 else nn.Identity()

    def attend(self, q, k, v, hw):
        """The SLA core on (B, N, C) q, k, v laid out row-major on the ``hw`` grid; returns (B, N, C)."""
        out_dtype = v.dtype
        q, k, v = q.astype(ms.float32), k.astype(ms.float32), v.astype(ms.float32)
        k = k + resize_token_grid(self.positional_encoding, self.grid_size, hw).astype(ms.float32)
        q = split_heads(ops.relu(q), self.num_heads)
        k = split_heads(ops.relu(k), self.num_heads)
        v = split_heads(v, self.num_heads)
        n, d = q.shape[1], q.shape[2]
        # Divide by the normaliser instead of multiplying by z = 1/(...): the same numbers to rounding,
        # and MindSpore's ONNX exporter has no Reciprocal.
        normaliser = (q * k.sum(axis=1, keepdims=True)).sum(axis=-1, keepdims=True) + self.eps
        if n > d:
            out = ops.bmm(q, ops.bmm(k.transpose(0, 2, 1), v)) / normaliser
        else:
            out = ops.bmm(ops.bmm(q, k.transpose(0, 2, 1)), v) / normaliser
        out = out + self._dwc_tokens(v, hw)
        return merge_heads(out, self.num_heads).astype(out_dtype)

    def _dwc_tokens(self, v, hw):
        bh, _, d = v.shape
        grid = v.reshape(bh, hw[0], hw[1], d).transpose(0, 3, 1, 2)
        return self.dwc(grid).transpose(0, 2, 3, 1).reshape(bh, hw[0] * hw[1], d)

    def construct(self, x, hw):
        q, k, v = ops.split(self.qkv(x), self.dim, axis=-1)
        return self.proj_drop(self.proj(self.attend(q, k, v, hw)))
