"""Registration of SLAB models in MindCV's registry, and the factory conventions they share."""
import fnmatch

from mindcv.models.registry import is_model
from mindcv.models.registry import register_model as _mindcv_register

__all__ = ["register_model", "list_models", "default_cfg", "check_pretrained", "build_model"]

_SLAB_MODELS = []


def register_model(fn):
    """Register ``fn`` in MindCV; a name that MindCV already has is refused, never shadowed."""
    if is_model(fn.__name__) and fn.__name__ not in _SLAB_MODELS:
        raise RuntimeError(f"model name '{fn.__name__}' already exists in MindCV; pick another name.")
    if fn.__name__ not in _SLAB_MODELS:
        _SLAB_MODELS.append(fn.__name__)
    return _mindcv_register(fn)


def list_models(pattern="*"):
    """Names of the SLAB models registered by this package that match the glob ``pattern``."""
    return sorted(n for n in _SLAB_MODELS if fnmatch.fnmatch(n, pattern))


def default_cfg(first_conv, official_name, input_size=(3, 224, 224), classifier="head"):
    return {"url": "", "num_classes": 1000, "input_size": input_size, "first_conv": first_conv,
            "classifier": classifier, "official_name": official_name}


def check_pretrained(pretrained, name):
    if pretrained:
        raise ValueError(f"No MindSpore weights are hosted for '{name}'. Convert the official PyTorch "
                         f"checkpoint with `python -m slab_ms.convert --model {name} --src FILE.pth --dst "
                         f"{name}.ckpt` and pass checkpoint_path='{name}.ckpt'.")


def build_model(cls, name, pretrained, *archs, image_size=224, **kwargs):
    """The body every factory shares: refuse ``pretrained``, merge the released architecture dicts
    ``archs`` with the caller's kwargs (None keeps the default) and build ``cls`` for ``image_size``."""
    check_pretrained(pretrained, name)
    args = {}
    for arch in archs:
        args.update(arch)
    args.update({k: v for k, v in kwargs.items() if v is not None})
    return cls(img_size=image_size, **args)
