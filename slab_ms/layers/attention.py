"""Simplified Linear Attention (paper Eq. 8) and the softmax attention baseline.

SLA for one image or window, with q, k, v of shape (B, N, C), C = heads · head_dim:

    k ← k + P                                   (learnable positional encoding, on k only)
    out_i = Σ_j (ReLU(q_i)·ReLU(k_j)) v_j / (ReLU(q_i)·Σ_j ReLU(k_j) + 1e-6)  +  DWC(v)

Layout: q, k, v stay in the (B, N, h·d) layout the projections produce. With N > head_dim the
per-head products Kᵀ V are one (B, C, C) batched matmul masked to its h diagonal d×d blocks (the
other blocks would mix heads), the normaliser of every (token, head) is one matmul of Q with the
per-head sums of K, and Q (Kᵀ V) lands back in (B, N, C): no split/merge transposes of q, k, v and
no reduction kernels, at the price of h× the flops of the two small products. With N ≤ head_dim
(Q Kᵀ) V per head is cheaper and q, k, v are split into heads. Both give the reference's numbers
to float rounding. The normaliser and products run in float32 even under mixed precision. One
depth-wise convolution ``dwc`` over head_dim channels is shared by all heads; on the grid the cell was
built for it runs as two matmuls (``depthwise_conv_as_matmuls``), on any other as the Conv2d. In eval
mode on float32 CPU tensors the whole layer (positional encoding, ReLUs, the per-head products, the
normaliser and ``dwc``) is one native pass (``cpu_kernels``): per-head Kᵀ V without the mask's h×
flops and without the intermediates; ``construct`` hands it the qkv projection unsplit, in training
too (float32), where a native backward gives d qkv, d P and the conv's weight and bias gradients.
``SimplifiedLinearAttention.attend`` is the single implementation; the PVT, Swin and CSwin
attentions call it. The softmax baseline's core is one native kernel likewise, forward and backward
(``softmax_attention_kernel``).
"""
import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from .cpu_kernels import kernel
from .dense import dense
from .helpers import float32_softmax, to_2tuple

__all__ = ["Attention", "SimplifiedLinearAttention", "split_heads", "merge_heads", "resize_token_grid",
           "banded_column_index", "row_shift_matrix", "depthwise_conv_as_matmuls", "head_block_mask",
           "head_indicator", "simplified_linear_attention_tokens", "simplified_linear_attention_qkv",
           "kv_first_attention", "qk_first_attention", "softmax_attention_qkv", "softmax_attention_kernel",
           "sla_qkv_kernel", "SLA_EPS"]

SLA_EPS = 1e-6  # added to the normaliser, as in the reference
_BMM_TRANSPOSED_A = ops.BatchMatMul(transpose_a=True)


def split_heads(x, num_heads):
    """(B, N, h·d) -> (B·h, N, d), batch-major then head (``b n (h c) -> (b h) n c``)."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(0, 2, 1, 3).reshape(b * num_heads, n, c // num_heads)


def merge_heads(x, num_heads):
    """(B·h, N, d) -> (B, N, h·d)."""
    bh, n, d = x.shape
    return x.reshape(bh // num_heads, num_heads, n, d).transpose(0, 2, 1, 3).reshape(bh // num_heads, n, num_heads * d)


def head_indicator(num_heads, head_dim):
    """(h·d, h) float32 0/1 matrix: entry [c, i] is 1 when channel c belongs to head i."""
    return np.kron(np.eye(num_heads, dtype=np.float32), np.ones((head_dim, 1), np.float32))


def head_block_mask(num_heads, head_dim):
    """(h·d, h·d) float32 0/1 matrix, 1 on the h diagonal d×d blocks (channel pairs of one head)."""
    indicator = head_indicator(num_heads, head_dim)
    return indicator @ indicator.T


def resize_token_grid(tokens, src_hw, dst_hw):
    """Bilinearly resize a (1, h·w, C) token map laid out row-major on ``src_hw`` to ``dst_hw``."""
    if tuple(src_hw) == tuple(dst_hw):
        return tokens
    _, _, c = tokens.shape
    grid = tokens.reshape(1, src_hw[0], src_hw[1], c).transpose(0, 3, 1, 2)
    grid = ops.interpolate(grid, size=tuple(dst_hw), mode="bilinear", align_corners=False)
    return grid.transpose(0, 2, 3, 1).reshape(1, dst_hw[0] * dst_hw[1], c)


def banded_column_index(width, kernel_size):
    """(W, k·W) int32 index into one channel's flattened k×k kernel followed by a zero (index k·k).

    Entry [x', a·W + x] picks w[a, x' − x + k//2]: the weight kernel row a gives input column x' in
    output column x, or the zero where x' is outside the kernel's reach (the conv's zero padding).
    """
    radius = kernel_size // 2
    source, target = np.arange(width)[:, None], np.arange(width)[None, :]
    tap = source - target + radius
    index = np.where((tap >= 0) & (tap < kernel_size), tap, -1)
    rows = [np.where(index >= 0, a * kernel_size + index, kernel_size * kernel_size) for a in range(kernel_size)]
    return np.concatenate(rows, axis=1).astype(np.int32)


def row_shift_matrix(height, kernel_size):
    """(H, H·k) 0/1 matrix: output row y sums kernel row a's result at input row y' = y + a − k//2,
    stored at column y'·k + a (rows outside the map are the conv's zero padding)."""
    matrix = np.zeros((height, height * kernel_size), np.float32)
    for y in range(height):
        for a in range(kernel_size):
            source = y + a - kernel_size // 2
            if 0 <= source < height:
                matrix[y, source * kernel_size + a] = 1.0
    return matrix


def depthwise_conv_tokens(tokens, weight, bias):
    """The depth-wise conv (zero padding keeps the grid) on (B, H, W, heads, d) tokens, the filters (d, 1, k, k)
    shared by the heads, in standard ops (the native kernel's formula and gradient)."""
    b, h, w, heads, d = tokens.shape
    grid = tokens.transpose(0, 3, 4, 1, 2).reshape(b * heads, d, h, w)
    out = ops.conv2d(grid, weight, bias, pad_mode="pad", padding=weight.shape[-1] // 2, groups=d)
    return out.reshape(b, heads, d, h, w).transpose(0, 3, 4, 1, 2)


def simplified_linear_attention_tokens(q, k, v, positional_encoding, weight, bias):
    """SLA with its depth-wise conv on (B, H, W, heads, d) q, k, v and a (1, H, W, heads, d) positional encoding,
    per head in standard ops: the native kernel's formula and gradient."""
    b, h, w, heads, d = q.shape

    def per_head(t):
        return t.reshape(b, h * w, heads, d).transpose(0, 2, 1, 3)

    q, k = per_head(ops.relu(q)), per_head(ops.relu(k + positional_encoding))
    kv = ops.matmul(k.transpose(0, 1, 3, 2), per_head(v))  # (B, heads, d, d)
    normaliser = ops.matmul(q, k.sum(axis=2, keepdims=True).transpose(0, 1, 3, 2)) + SLA_EPS  # (B, heads, N, 1)
    out = (ops.matmul(q, kv) / normaliser).transpose(0, 2, 1, 3).reshape(b, h, w, heads, d)
    return out + depthwise_conv_tokens(v, weight, bias)


def simplified_linear_attention_qkv(qkv, positional_encoding, weight, bias):
    """``simplified_linear_attention_tokens`` of a (B, H, W, 3, heads, d) qkv projection."""
    q, k, v = ops.unstack(qkv, axis=3)
    return simplified_linear_attention_tokens(q, k, v, positional_encoding, weight, bias)


def depthwise_conv_as_matmuls(tokens, weight, bias, hw, column_index, row_shifts):
    """A stride-1, zero-padded k×k depth-wise convolution of (B, H·W, C) row-major tokens, as two matmuls.

    ``weight`` (c, 1, k, k) and ``bias`` (c,) have c channels; C may be a multiple g·c of them, the
    channel blocks [i·c, (i+1)·c) sharing the same c filters (SLA's heads share one conv). The conv is
    the sum over kernel rows a of a 1-D conv along the width by that row, shifted by a − k//2 rows.
    Per channel, all k 1-D convs are one matmul with a banded (W, k·W) matrix gathered from the
    weights (``banded_column_index``); the shifted sum is one matmul with the constant ``row_shifts``
    (``row_shift_matrix``). Same numbers as the conv to float rounding; on MindSpore's CPU backend
    5-10x faster than its depth-wise Conv2d, forward and backward, at every SLAB grid size (7² to 56²).
    The price is memory: the k row convolutions and the broadcast row matrix are each k times the
    size of the input.
    """
    b, n, channels = tokens.shape
    h, w = hw
    c, k = weight.shape[0], weight.shape[-1]
    groups = channels // c
    taps = ops.concat((weight.reshape(c, k * k), ops.zeros((c, 1), weight.dtype)), axis=1)
    banded = ops.gather(taps, column_index, 1)  # (c, W, k·W)
    by_channel = tokens.reshape(b, n, groups, c).transpose(3, 2, 0, 1).reshape(c, groups * b * h, w)
    row_convs = ops.bmm(by_channel, banded).reshape(c * groups * b, h * k, w)  # [(c, g, b), (y', a), x]
    # An explicit broadcast + bmm: MindSpore's broadcasting matmul is ~2x slower here.
    out = ops.bmm(ops.broadcast_to(row_shifts, (c * groups * b, h, h * k)), row_convs)  # (c·g·B, H, W)
    return (out.reshape(c, groups, b, n).transpose(2, 3, 1, 0) + bias).reshape(b, n, channels)


def kv_first_attention(q, k, v, num_heads, head_mask, head_indicator, eps):
    """Q (Kᵀ V) / (Q Σ_j K_j) per head on ReLU'd (B, N, C) q, k, every product batched over all heads in (B, N, C)
    (``head_mask``: ``head_block_mask``, ``head_indicator``: ``head_indicator``, both as Tensors)."""
    b, n, c = q.shape
    kv = _BMM_TRANSPOSED_A(k, v)  # (B, C, C); its diagonal blocks are the heads' Kᵀ V (no Transpose op)
    if num_heads > 1:
        kv = kv * head_mask.astype(kv.dtype)
    # Σ_j K_j as a matmul with ones: MindSpore's CPU ReduceSum over the token axis is ~4x slower.
    k_sum = ops.bmm(ops.ones((b, 1, n), k.dtype), k)  # (B, 1, C)
    normaliser = ops.bmm(q, k_sum.reshape(b, c, 1) * head_indicator.astype(k.dtype)) + eps  # (B, N, h)
    # ones / z rather than 1.0 / z: MindSpore exports the latter as Reciprocal, which ONNX export lacks.
    scale = ops.ones_like(normaliser) / normaliser
    out = ops.bmm(q, kv).reshape(b, n, num_heads, c // num_heads) * scale.expand_dims(-1)
    return out.reshape(b, n, c)


def qk_first_attention(q, k, v, num_heads, eps):
    """(Q Kᵀ) V / (Q Kᵀ 1) per head on ReLU'd q, k: cheaper than Kᵀ V when the grid has at most head_dim tokens."""
    q, k, v = (split_heads(t, num_heads) for t in (q, k, v))
    attn = ops.bmm(q, k.transpose(0, 2, 1))
    # Divide instead of multiplying by z = 1/(...): MindSpore's ONNX exporter has no Reciprocal.
    out = ops.bmm(attn, v) / (attn.sum(axis=-1, keepdims=True) + eps)
    return merge_heads(out, num_heads)


def simplified_linear_attention_qkv_grad(qkv, positional_encoding, weight, bias, out, dout):
    """The gradients of ``simplified_linear_attention_qkv`` (qkv, positional encoding, DWC weight and bias) for the
    output gradient ``dout`` (``out``, its output, is unused), in standard ops: the native backward kernel's
    formula."""
    return ops.GradOperation(get_all=True, sens_param=True)(simplified_linear_attention_qkv)(
        qkv, positional_encoding, weight, bias, dout)


def sla_qkv_kernel():
    """The native ``simplified_linear_attention_qkv`` with its native backward, or None where native kernels are
    not used."""
    backward = kernel("SimplifiedLinearAttentionQKVGrad", simplified_linear_attention_qkv_grad,
                      lambda *shapes: shapes[:4], lambda *dtypes: dtypes[:4])
    if backward is None:
        return None

    def bprop(qkv, positional_encoding, weight, bias, out, dout):
        return backward(qkv, positional_encoding, weight, bias, out, dout)

    return kernel("SimplifiedLinearAttentionQKV", simplified_linear_attention_qkv, lambda qkv, *_: qkv[:3] + qkv[4:],
                  bprop=bprop)


def softmax_attention_qkv(qkv):
    """Softmax attention per head, scale head_dim^-½, of a (B, N, 3, heads, d) qkv projection -> (B, N, heads, d), in
    standard ops: the native kernel's formula."""
    q, k, v = ops.unstack(qkv, axis=2)
    q, k, v = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    attn = ops.softmax(ops.matmul(q * (q.shape[-1] ** -0.5), k.transpose(0, 1, 3, 2)), axis=-1)
    return ops.matmul(attn, v).transpose(0, 2, 1, 3)


def softmax_attention_qkv_grad(qkv, out, dout):
    """The gradient of ``softmax_attention_qkv`` at ``qkv`` for the output gradient ``dout`` (``out``, its output, is
    unused), in standard ops: the native backward kernel's formula."""
    return ops.GradOperation(sens_param=True)(softmax_attention_qkv)(qkv, dout)


def softmax_attention_kernel():
    """The native ``softmax_attention_qkv`` with its native backward, or None where native kernels are not used."""
    backward = kernel("SoftmaxAttentionQKVGrad", softmax_attention_qkv_grad, lambda qkv, *_: qkv)
    if backward is None:
        return None

    def bprop(qkv, out, dout):
        return (backward(qkv, out, dout),)

    return kernel("SoftmaxAttentionQKV", softmax_attention_qkv, lambda qkv: qkv[:2] + qkv[3:], bprop=bprop)


class Attention(nn.Cell):
    """Multi-head softmax self-attention (the DeiT / ViT baseline).

    On float32 CPU tensors (eval mode, or training without attention dropout) the attention core runs as one native
    kernel on the qkv projection as it is, forward and backward (``softmax_attention_kernel``): per image and head
    QKᵀ, a max-subtracted softmax and its product with V, written with the heads merged, so no split, transposes or
    N×N intermediates in the graph.
    """

    def __init__(self, dim, num_heads=8, qkv_bias=False, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = dense(dim, dim * 3, has_bias=qkv_bias)
        self.attn_drop = nn.Dropout(p=attn_drop) if attn_drop > 0 else nn.Identity()
        self.proj = dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop) if proj_drop > 0 else nn.Identity()
        self.native_kernel = softmax_attention_kernel()

    def construct(self, x, hw=None):
        b, n, c = x.shape
        qkv = self.qkv(x)
        if (self.native_kernel is not None and qkv.dtype == ms.float32
                and (not self.training or isinstance(self.attn_drop, nn.Identity))):
            x = self.native_kernel(qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads)).reshape(b, n, c)
        else:
            q, k, v = ops.split(qkv, c, axis=-1)
            q, k, v = split_heads(q, self.num_heads), split_heads(k, self.num_heads), split_heads(v, self.num_heads)
            attn = float32_softmax(ops.bmm(q * self.scale, k.transpose(0, 2, 1)), v.dtype)
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
        kernel_size: kernel of the depth-wise convolution on v (5 in every released model); 0 builds no
            depth-wise conv (the "SLA without DWC" ablation, which always runs the standard ops).
        proj_drop: dropout after the output projection.
        with_proj: build ``qkv`` and ``proj`` Dense layers (subclasses that project differently
            pass False).
    """

    def __init__(self, dim, num_heads, grid_size, qkv_bias=True, kernel_size=5, proj_drop=0.0, with_proj=True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}.")
        if kernel_size < 0 or (kernel_size and kernel_size % 2 == 0):
            raise ValueError(f"the depth-wise conv keeps the grid only with an odd kernel_size (or 0: none), got "
                             f"{kernel_size}.")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.grid_size = to_2tuple(grid_size)
        self.eps = SLA_EPS  # an attribute: MindSpore's AMP rewrite of a cell does not see module-level constants
        num_tokens = self.grid_size[0] * self.grid_size[1]
        if with_proj:
            self.qkv = dense(dim, dim * 3, has_bias=qkv_bias)
        self.positional_encoding = Parameter(Tensor(np.zeros((1, num_tokens, dim), np.float32)),
                                             name="positional_encoding")
        self.use_dwc = kernel_size > 0
        if self.use_dwc:
            self.dwc = nn.Conv2d(self.head_dim, self.head_dim, kernel_size, group=self.head_dim, pad_mode="pad",
                                 padding=kernel_size // 2, has_bias=True)
            # Constants of the matmul form of ``dwc`` on this grid (not parameters; see ``_dwc_tokens``).
            self.dwc_column_index = Tensor(banded_column_index(self.grid_size[1], kernel_size))
            self.dwc_row_shifts = Tensor(row_shift_matrix(self.grid_size[0], kernel_size))
        self.head_mask = Tensor(head_block_mask(num_heads, self.head_dim))
        self.head_indicator = Tensor(head_indicator(num_heads, self.head_dim))
        self.native_kernel = (kernel("SimplifiedLinearAttention", simplified_linear_attention_tokens)
                              if self.use_dwc else None)
        self.native_qkv_kernel = sla_qkv_kernel() if self.use_dwc and with_proj else None
        if with_proj:
            self.proj = dense(dim, dim)
            self.proj_drop = nn.Dropout(p=proj_drop) if proj_drop > 0 else nn.Identity()

    def attend(self, q, k, v, hw):
        """The SLA core on (B, N, C) q, k, v laid out row-major on the ``hw`` grid; returns (B, N, C)."""
        out_dtype = v.dtype
        q, k, v = q.astype(ms.float32), k.astype(ms.float32), v.astype(ms.float32)
        if self.native_kernel is not None and not self.training and isinstance(self.dwc, nn.Conv2d):
            b, n, c = q.shape
            grid = (b, hw[0], hw[1], self.num_heads, self.head_dim)
            out = self.native_kernel(q.reshape(grid), k.reshape(grid), v.reshape(grid), *self._native_operands(hw))
            return out.reshape(b, n, c).astype(out_dtype)
        positional_encoding = resize_token_grid(self.positional_encoding, self.grid_size, hw).astype(ms.float32)
        q, k = ops.relu(q), ops.relu(k + positional_encoding)
        # module functions, not methods: a method call of a float16 cell would cast q, k, v back to float16
        if q.shape[1] > self.head_dim:
            out = kv_first_attention(q, k, v, self.num_heads, self.head_mask, self.head_indicator, self.eps)
        else:
            out = qk_first_attention(q, k, v, self.num_heads, self.eps)
        if self.use_dwc:
            out = out + self._dwc_tokens(v, hw)
        return out.astype(out_dtype)

    def _dwc_tokens(self, v, hw):
        """``dwc`` on the (B, N, C) float32 values laid out on ``hw``, one conv per head: as matmuls on the grid the
        cell was built for (same numbers, 5-10x faster than the Conv2d on CPU), as the Conv2d on any other grid."""
        b, n, c = v.shape
        if tuple(hw) == self.grid_size and isinstance(self.dwc, nn.Conv2d):  # MindCV's O1 wraps it: no weight
            return depthwise_conv_as_matmuls(v, self.dwc.weight.astype(v.dtype), self.dwc.bias.astype(v.dtype), hw,
                                             self.dwc_column_index, self.dwc_row_shifts)
        grid = v.reshape(b, hw[0], hw[1], self.num_heads, self.head_dim).transpose(0, 3, 4, 1, 2)
        out = self.dwc(grid.reshape(b * self.num_heads, self.head_dim, hw[0], hw[1]))
        return out.reshape(b, c, n).transpose(0, 2, 1)

    def construct(self, x, hw):
        qkv = self.qkv(x)
        if (self.native_qkv_kernel is not None and (not self.training or qkv.dtype == ms.float32)
                and isinstance(self.dwc, nn.Conv2d)):
            out = self._attend_qkv(qkv, hw)
        else:
            q, k, v = ops.split(qkv, self.dim, axis=-1)
            out = self.attend(q, k, v, hw)
        return self.proj_drop(self.proj(out))

    def _attend_qkv(self, qkv, hw):
        """``attend`` of the native kernel on the (B, N, 3C) projection as it is (no split into q, k, v)."""
        b, n, c3 = qkv.shape
        packed = (b, hw[0], hw[1], 3, self.num_heads, self.head_dim)
        out = self.native_qkv_kernel(qkv.astype(ms.float32).reshape(packed), *self._native_operands(hw))
        return out.reshape(b, n, c3 // 3).astype(qkv.dtype)

    def _native_operands(self, hw):
        """The native kernels' inputs after q, k, v, in float32: the positional encoding on ``hw`` as (1, H, W, heads,
        head_dim), then the DWC's weight and bias."""
        positional_encoding = resize_token_grid(self.positional_encoding, self.grid_size, hw).astype(ms.float32)
        return (positional_encoding.reshape(1, hw[0], hw[1], self.num_heads, self.head_dim),
                self.dwc.weight.astype(ms.float32), self.dwc.bias.astype(ms.float32))
