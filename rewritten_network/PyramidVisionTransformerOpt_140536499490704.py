import sys
import mindspore
from mindspore import nn
from mindspore.nn import Cell
from mindspore.ops import functional as F
#
#
sys.path.insert(0, '/work/wt/integ/slab_ms/models')
from slab_ms.models.backbone import BackboneMixin

class BackboneMixinOpt(BackboneMixin):

    def __init__(self):
        for key, value in BackboneMixin.__dict__.items():
            if not key.startswith('__'):
                setattr(BackboneMixinOpt, key, value)
#
sys.path.insert(0, '/work/wt/integ/slab_ms/models')
from slab_ms.layers import check_input, resize_token_grid
from slab_ms.models.pvt import PyramidVisionTransformer

class PyramidVisionTransformerOpt(PyramidVisionTransformer, BackboneMixinOpt, nn.Cell):

    def __init__(self, obj):
        BackboneMixinOpt.__init__(self)
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def no_weight_decay(self):
        """Empty: the reference recipe weight-decays ``pos_embed{s}`` (its exclusion list names a missing cls_token)."""
        return set()

    def _stage(self, x, hw, patch_embed, pos_embed, blocks, grid):
        """One stage: the image (``hw`` None) or the previous stage's tokens on ``hw`` -> tokens and their grid."""
        x, hw = patch_embed(x, hw)
        x = self.pos_drop(x + resize_token_grid(pos_embed, grid, hw))
        for blk in blocks:
            x = blk(x, hw)
        return (x, hw)

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

    def forward_head(self, x, pre_logits=False):
        x = x.mean(axis=1)
        return x if pre_logits else self.head(x)
#