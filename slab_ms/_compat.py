"""Shims for MindSpore 2.x / MindCV 0.3, in one place, each with the reason."""
from mindspore import nn, ops
from mindcv.models import model_factory as _mindcv_factory
from mindcv.models import pvt as _mindcv_pvt

_mindcv_load_model_checkpoint = _mindcv_factory.load_model_checkpoint


def _load_model_checkpoint(model, checkpoint_path="", ema=False, auto_mapping=False):
    # MindCV 0.3 silently skips a missing checkpoint file and loads non-strictly; for SLAB models
    # `mindcv.create_model(..., checkpoint_path=...)` loads strictly with clear errors instead.
    from .models.registry import is_slab_model
    from .weights import load_checkpoint
    if is_slab_model(model):
        load_checkpoint(model, checkpoint_path, ema=ema)
    else:
        _mindcv_load_model_checkpoint(model, checkpoint_path, ema, auto_mapping)


_mindcv_factory.load_model_checkpoint = _load_model_checkpoint


def _quiet_cell_del(self, _cell_del=nn.Cell.__del__):
    # MindSpore 2.10's Cell.__del__ reads module globals that are already None while the interpreter
    # shuts down, printing one "Exception ignored" traceback per cell at every script's exit.
    try:
        _cell_del(self)
    except (AttributeError, TypeError):
        pass


nn.Cell.__del__ = _quiet_cell_del


def _pvt_pos_embed(self, pos_embed, ph, pw, H, W):  # pylint: disable=invalid-name
    # MindCV 0.3's PVT v1 compares every stage's grid with stage 1's and resizes with ops.ResizeBilinear,
    # which MindSpore 2.10 no longer has, so its forward fails. Resize only a grid that differs, bilinearly.
    if ph * pw == H * W:
        return pos_embed
    grid = pos_embed.reshape(1, ph, pw, -1).transpose(0, 3, 1, 2)
    grid = ops.interpolate(grid, size=(H, W), mode="bilinear", align_corners=False)
    return grid.reshape(1, -1, H * W).transpose(0, 2, 1)


_mindcv_pvt.PyramidVisionTransformer._get_pos_embed = _pvt_pos_embed  # pylint: disable=protected-access
