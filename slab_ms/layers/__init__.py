"""SLAB building blocks."""
from .attention import Attention, SimplifiedLinearAttention, merge_heads, resize_token_grid, split_heads
from .drop_path import DropPath
from .fold import (ChannelAffine, fold_final_norm, fold_norm_into_consumers, fold_norm_into_producer, keep_as_affine,
                   register_fold)
from .dense import Dense, dense
from .helpers import float32_softmax, to_2tuple
from .mlp import Mlp
from .norm import (MaskedPRepBN, MaskedRepBN, PRepBN, RepBN, RMSNorm, TokenBatchNorm, attach_prepbn_schedule,
                   get_masked_norm_layer, get_norm_layer, prepbn_layers)
from .patch_embed import PatchConv2d, PatchEmbed, UnfoldConv2d, check_input
from .prepbn_schedule import PRepBNSchedule, check_schedule_fits, gamma

__all__ = ["Attention", "SimplifiedLinearAttention", "merge_heads", "resize_token_grid", "split_heads", "DropPath",
           "ChannelAffine", "fold_final_norm", "fold_norm_into_consumers", "fold_norm_into_producer", "keep_as_affine",
           "register_fold", "Dense", "dense", "float32_softmax", "to_2tuple", "Mlp", "MaskedPRepBN", "MaskedRepBN",
           "PRepBN", "RepBN", "RMSNorm", "TokenBatchNorm", "attach_prepbn_schedule", "get_masked_norm_layer",
           "get_norm_layer", "prepbn_layers", "PatchConv2d", "PatchEmbed", "UnfoldConv2d", "check_input",
           "PRepBNSchedule", "check_schedule_fits", "gamma"]
