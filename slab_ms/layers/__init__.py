"""SLAB building blocks."""
from .attention import Attention, SimplifiedLinearAttention, merge_heads, resize_token_grid, split_heads
from .drop_path import DropPath
from .helpers import dense, to_2tuple
from .mlp import Mlp
from .norm import (PRepBN, RepBN, TokenBatchNorm, get_norm_layer, get_prepbn_schedule, prepbn_gamma, prepbn_layers,
                   set_prepbn_schedule, share_prepbn_schedule)
from .patch_embed import PatchConv2d, PatchEmbed, check_input
