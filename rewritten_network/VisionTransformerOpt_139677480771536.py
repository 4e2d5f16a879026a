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
from mindspore import nn, ops
from slab_ms.layers import check_input, resize_token_grid
from slab_ms.models.deit import VisionTransformer

class VisionTransformerOpt(VisionTransformer, BackboneMixinOpt, nn.Cell):

    def __init__(self, obj):
        BackboneMixinOpt.__init__(self)
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def no_weight_decay(self):
        return {name for name in ('pos_embed', 'cls_token') if hasattr(self, name)}

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

    def forward_head(self, x, pre_logits=False):
        x = x[:, 0] if self.global_pool == 'token' else x.mean(axis=1)
        return x if pre_logits else self.head(x)
#