"""Shims for MindSpore 2.x / MindCV 0.3 (each with the reason)."""
from mindcv.models import model_factory as _mindcv_factory

_mindcv_load_model_checkpoint = _mindcv_factory.load_model_checkpoint


def _load_model_checkpoint(model, checkpoint_path="", ema=False, auto_mapping=False):
    # MindCV 0.3 silently skips a missing checkpoint file and loads non-strictly; for SLAB models
    # `mindcv.create_model(..., checkpoint_path=...)` loads strictly with clear errors instead.
    from .models._factory import is_slab_model, load_checkpoint
    if is_slab_model(model):
        load_checkpoint(model, checkpoint_path, ema=ema)
    else:
        _mindcv_load_model_checkpoint(model, checkpoint_path, ema, auto_mapping)


_mindcv_factory.load_model_checkpoint = _load_model_checkpoint
