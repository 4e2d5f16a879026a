"""Shims for MindSpore 2.x / MindCV 0.3, in one place, each with the reason."""
from mindspore import nn
from mindcv.models import model_factory as _mindcv_factory

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
