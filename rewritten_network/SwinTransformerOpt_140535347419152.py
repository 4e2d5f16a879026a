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
from slab_ms.layers import check_input
from slab_ms.models.swin import SwinTransformer

class SwinTransformerOpt(SwinTransformer, BackboneMixinOpt, nn.Cell):

    def __init__(self, obj):
        BackboneMixinOpt.__init__(self)
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def no_weight_decay(self):
        """Relative position bias tables (the reference's no-decay keyword); SLA encodings are decayed."""
        return {name for name, _ in self.parameters_and_names() if name.endswith('relative_position_bias_table')}

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
        hp, wp = (-(-h // p) * p, -(-w // p) * p)
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

    def forward_head(self, x, pre_logits=False):
        x = x.mean(axis=1)
        return x if pre_logits else self.head(x)
#