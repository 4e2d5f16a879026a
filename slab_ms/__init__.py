"""slab-ms: SLAB (ICML 2024) backbones for MindSpore / MindCV.

``import slab_ms`` registers every SLAB model in MindCV, so ``mindcv.create_model("slab_deit_tiny")``
works.
"""
import os as _os
import sys as _sys


def _running_a_tool():
    """True while a tool of this package starts: ``python -m slab_ms.<tool>`` (``sys.argv[0]`` is "-m" while
    the package is imported), a ``slab-<tool>`` console script, or the repository's ``train.py`` /
    ``validate.py`` / ``export.py``."""
    first = _sys.argv[0] if _sys.argv else ""
    if first == "-m" or _os.path.basename(first).startswith("slab-"):
        return True
    repository = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    return (_os.path.basename(first) in ("train.py", "validate.py", "export.py")
            and _os.path.dirname(_os.path.abspath(first)) == repository)


# MindSpore's log level is read once, when mindspore is imported. The tools keep MindSpore to its errors
# (GLOG_v=3, as the scripts/ do) unless the user chose a level; a program that imports slab_ms keeps MindSpore's.
if _running_a_tool() and "mindspore" not in _sys.modules:
    _os.environ.setdefault("GLOG_v", "3")

from . import _compat  # noqa: F401  (MindCV shims first)
from .factory import create_model
from .layers import PRepBNSchedule
from .models import list_models
from .prepbnify import prepbnify
from .reparam import reparameterize_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "reparameterize_model", "prepbnify", "PRepBNSchedule", "__version__"]
