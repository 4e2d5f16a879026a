"""``create_model``: ``mindcv.create_model`` with strict checkpoint loading."""
import mindcv

from .weights import load_checkpoint

__all__ = ["create_model"]


def create_model(model_name, num_classes=1000, pretrained=False, in_channels=3, checkpoint_path="", ema=False,
                 checkpoint_exclude=(), **kwargs):
    """``mindcv.create_model`` with strict checkpoint loading (the MindCV one ignores a missing file);
    ``checkpoint_exclude`` names cells (e.g. ``("head",)``) whose parameters keep their initial values."""
    net = mindcv.create_model(model_name, num_classes=num_classes, pretrained=pretrained, in_channels=in_channels,
                              **kwargs)
    if checkpoint_path:
        load_checkpoint(net, checkpoint_path, ema=ema, exclude=checkpoint_exclude)
    return net
