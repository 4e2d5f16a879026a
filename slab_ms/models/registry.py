"""Registration of SLAB models in MindCV's registry, and the conventions every family shares.

A family is one module of ``slab_ms.models``. It holds the architecture and, next to it, everything
specific to it: ``ARCHS`` (model name -> the released architecture's kwargs, the γ schedule's T included),
``default_cfgs``, its factory functions ``name(pretrained=False, **kwargs)`` (registered with
:func:`register_model`, built with :func:`build_model`), the folds of its cells (``slab_ms.layers.fold``),
``checkpoint_filter(state_dict, model) -> (kept, notes, mismatched)`` for the official checkpoints (optional,
``slab_ms.weights.official``) and ``test_configs`` (model
name -> tiny kwargs that keep every cell type; the registry-parametrised tests build them).
"""
import fnmatch
import inspect
import sys

from mindcv.models import registry as _mindcv_registry
from mindcv.models.registry import is_model
from mindcv.models.registry import register_model as _mindcv_register

__all__ = ["register_model", "list_models", "is_slab_model", "family_of", "tiny_config", "default_cfg", "build_model",
           "KWARG_ALIASES"]

_SLAB_MODELS = {}  # name -> the family module that registered it

# Official (timm / reference) spellings accepted by every factory, and the name they stand for.
KWARG_ALIASES = {"img_size": "image_size", "in_chans": "in_channels"}
# ``mindcv.create_model`` always passes these; an official alias given with them means the alias.
_MINDCV_DEFAULTS = {"in_channels": 3}


def register_model(fn):
    """Register ``fn`` in MindCV; a name that MindCV already has is refused, never shadowed.

    MindCV files a model under the last part of its module name, and ``pvt`` is also MindCV's own PVT; ours
    are filed under ``slab_<family>`` and all of them under ``slab``, so ``mindcv.list_models(module="slab")``
    lists exactly the SLAB models and ``module="pvt"`` only MindCV's.
    """
    name = fn.__name__
    if is_model(name) and name not in _SLAB_MODELS:
        raise RuntimeError(f"model name '{name}' already exists in MindCV; pick another name.")
    _SLAB_MODELS[name] = fn.__module__
    _mindcv_register(fn)
    exported = sys.modules[fn.__module__].__all__
    if exported.count(name) > 1:  # MindCV appends each model to its module's __all__, which already lists it
        exported.pop()
    family = fn.__module__.rsplit(".", 1)[-1]
    _mindcv_registry._module_to_models[family].discard(name)  # pylint: disable=protected-access
    for module in (f"slab_{family}", "slab"):
        _mindcv_registry._module_to_models[module].add(name)  # pylint: disable=protected-access
    _mindcv_registry._model_to_module[name] = f"slab_{family}"  # pylint: disable=protected-access
    return fn


def list_models(pattern="*"):
    """Names of the SLAB models registered by this package that match the glob ``pattern``."""
    return sorted(n for n in _SLAB_MODELS if fnmatch.fnmatch(n, pattern))


def family_of(model):
    """The family module of a registered model name or of a built model of this package's families (the
    language model is built by its own ``create_llama``, not registered), or None."""
    if isinstance(model, str):
        module = _SLAB_MODELS.get(model)
    else:
        module = type(model).__module__
        if not module.startswith(__name__.rpartition(".")[0] + ".") or module == __name__:
            module = None
    return sys.modules.get(module) if module else None


def is_slab_model(net):
    return family_of(net) is not None


def tiny_config(name):
    """Tiny factory kwargs of ``name`` that keep every cell type of the full model (for tests and demos)."""
    configs = getattr(family_of(name), "test_configs", {})
    if name not in configs:
        raise KeyError(f"{name} has no entry in its family's test_configs")
    return dict(configs[name])


def default_cfg(first_conv, input_size=(3, 224, 224), classifier="head"):
    return {"url": "", "num_classes": 1000, "input_size": input_size, "first_conv": first_conv,
            "classifier": classifier}


def canonical_kwargs(kwargs):
    """``kwargs`` with the official aliases renamed (both spellings with different values is an error) and
    None values dropped (None keeps the architecture's default, as in ``mindcv.create_model``)."""
    out = {k: v for k, v in kwargs.items() if v is not None and k not in KWARG_ALIASES}
    for alias, name in KWARG_ALIASES.items():
        value = kwargs.get(alias)
        if value is None:
            continue
        if name in out and out[name] != value and out[name] != _MINDCV_DEFAULTS.get(name):
            raise ValueError(f"{alias}={value!r} and {name}={out[name]!r} disagree; give one of them.")
        out[name] = value
    return out


# Architecture options that size an allocation (an int, or one per stage) and their largest sane value: a typo
# such as depth 100000000 would otherwise build for hours or ask for terabytes before any other check.
SIZE_LIMITS = {"image_size": 8192, "patch_size": 1024, "in_channels": 64, "embed_dim": 16384, "embed_dims": 16384,
               "depth": 256, "depths": 256, "num_heads": 1024, "mlp_ratio": 64, "mlp_ratios": 64, "window_size": 1024,
               "split_size": 1024, "sr_ratios": 1024, "kernel_size": 64}
MAY_BE_ZERO = {"kernel_size"}  # kernel_size 0: SLA without its depth-wise conv (the paper's ablation)


def check_kwargs(cls, name, args):
    """Refuse (ValueError) an option ``cls`` does not take, naming the ones it does, and a size out of
    :data:`SIZE_LIMITS`, before anything is built."""
    params = inspect.signature(cls.__init__).parameters
    named = [p for p, param in params.items() if p != "self" and param.kind is not param.VAR_KEYWORD]
    # a constructor's **kwargs takes the class's keyword_options, or anything when the class names none
    keyword_options = getattr(cls, "keyword_options", None)
    taken = {"image_size" if p == "img_size" else p for p in named} | set(keyword_options or ())
    unknown = sorted(k for k in args if k not in taken)
    if unknown and (keyword_options or not any(p.kind is p.VAR_KEYWORD for p in params.values())):
        raise ValueError(f"{name} has no option {', '.join(unknown)}; its options are {', '.join(sorted(taken))}")
    for key, limit in SIZE_LIMITS.items():
        value = args.get(key)
        values = value if isinstance(value, (list, tuple)) else [value]
        zero_ok = key in MAY_BE_ZERO
        if value is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                         and (0 <= v if zero_ok else 0 < v) and v <= limit for v in values):
            raise ValueError(f"{name}: {key}={value!r:.80} is not a number in {'[' if zero_ok else '('}0, {limit}]" +
                             (" (or one per stage)" if key.endswith("s") or key == "depth" else ""))


def build_model(cls, name, arch, pretrained=False, **kwargs):
    """The one body of every factory: refuse ``pretrained``, merge the caller's kwargs over the released
    architecture ``arch``, check them (:func:`check_kwargs`) and build ``cls`` (whose constructor takes the
    official ``img_size``)."""
    if pretrained:
        raise ValueError(f"No MindSpore weights are hosted for '{name}'. Convert the official PyTorch "
                         f"checkpoint with `python -m slab_ms.convert --model {name} --ckpt_file FILE.pth "
                         f"--file_name {name}.ckpt` and pass checkpoint_path='{name}.ckpt'.")
    args = dict(arch, **canonical_kwargs(kwargs))
    check_kwargs(cls, name, args)
    return cls(img_size=args.pop("image_size", 224), **args)
