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
from slab_ms.layers import check_input
from slab_ms.models.cswin import CSWinTransformer

class CSWinTransformerOpt(CSWinTransformer, BackboneMixinOpt, nn.Cell):

    def __init__(self, obj):
        BackboneMixinOpt.__init__(self)
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def _tiles(self, grids):
        return all((not s or (g[0] % s == 0 and g[1] % s == 0) for g, s in zip(grids, self.stripe_splits)))

    def _supported_sizes(self, count=5):
        top = 4 * max(self.img_size)
        sizes = [s for s in range(16, top + 1, 16) if self._tiles(stage_grids((s, s)))][:count]
        return ', '.join((str(s) for s in sizes)) + ' (height and width each)'

    def no_weight_decay(self):
        """None: like the reference, the SLA positional encodings are weight-decayed."""
        return set()

    def _stage(self, blocks, index, x, hw, image_hw):
        split = self.stripe_splits[index]
        if split and (hw[0] % split or hw[1] % split) and (not self.features_only):
            raise ValueError(f'CSWinTransformer: a {image_hw[0]}x{image_hw[1]} input gives stage {index + 1} a {hw[0]}x{hw[1]} map, which stripes of width {split} do not tile; input sizes that work: {self.supported_sizes}.')
        for blk in blocks:
            x = blk(x, hw)
        return x

    def forward_features(self, x):
        """Image -> normalised stage-4 tokens (B, N, C)."""
        check_input(x, self.in_channels, 1, type(self).__name__)
        image_hw = x.shape[2:]
        x, hw = self.stage1_conv_embed(x)
        x = self._stage(self.stage1, 0, x, hw, image_hw)
        x, hw = self.merge1(x, hw)
        x = self._stage(self.stage2, 1, x, hw, image_hw)
        x, hw = self.merge2(x, hw)
        x = self._stage(self.stage3, 2, x, hw, image_hw)
        x, hw = self.merge3(x, hw)
        x = self._stage(self.stage4, 3, x, hw, image_hw)
        return self.norm(x)

    def forward_stages(self, x, last):
        """Image -> ``((tokens (B, N, C), (H, W)), ...)`` of stages 1 .. ``last + 1`` (backbone form)."""
        image_hw = x.shape[2:]
        x, hw = self.stage1_conv_embed(x)
        x = self._stage(self.stage1, 0, x, hw, image_hw)
        stages = ((x, hw),)
        if last >= 1:
            x, hw = self.merge1(x, hw)
            x = self._stage(self.stage2, 1, x, hw, image_hw)
            stages = stages + ((x, hw),)
        if last >= 2:
            x, hw = self.merge2(x, hw)
            x = self._stage(self.stage3, 2, x, hw, image_hw)
            stages = stages + ((x, hw),)
        if last >= 3:
            x, hw = self.merge3(x, hw)
            x = self._stage(self.stage4, 3, x, hw, image_hw)
            stages = stages + ((x, hw),)
        return stages

    def forward_head(self, x, pre_logits=False):
        x = x.mean(axis=1)
        return x if pre_logits else self.head(x)
#