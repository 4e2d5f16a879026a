"""``create_model``: ``mindcv.create_model`` with strict checkpoint loading; ``check_model_name``: a model name
refused before anything is built."""
import difflib

import mindcv
from mindcv.models.registry import is_model

from .models import list_models
from .weights import load_checkpoint

__all__ = ["create_model", "check_model_name"]


def check_model_name(name, error, what="--model", any_mindcv_model=False):
    """Raise ``error`` (one message: the closest SLAB names, then all of them) unless ``name`` is a SLAB model, or
    with ``any_mindcv_model`` any model MindCV can create (train.py also trains MindCV's own, e.g. prepbnified)."""
    if is_model(name) if any_mindcv_model else name in list_models():
        return
    close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
    hint = f" (did you mean: {', '.join(close)}?)" if close else ""
    raise error(f"unknown {what} '{name}'{hint}; SLAB models: {', '.join(list_models())}")


def create_model(model_name, num_classes=1000, pretrained=False, in_channels=3, checkpoint_path="", ema=False,
                 checkpoint_exclude=(), **kwargs):
    """``mindcv.create_model`` with strict checkpoint loading (the MindCV one ignores a missing file);
    ``checkpoint_exclude`` names cells (e.g. ``("head",)``) whose parameters keep their initial values."""
    net = mindcv.create_model(model_name, num_classes=num_classes, pretrained=pretrained, in_channels=in_channels,
                              **kwargs)
    if checkpoint_path:
        load_checkpoint(net, checkpoint_path, ema=ema, exclude=checkpoint_exclude)
    return net
