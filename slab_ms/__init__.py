"""slab-ms: SLAB (ICML 2024) backbones for MindSpore / MindCV.

``import slab_ms`` registers every SLAB model in MindCV, so ``mindcv.create_model("slab_deit_tiny")``
works.
"""
from . import _compat  # noqa: F401  (MindCV shims first)
from .factory import create_model
from .layers import PRepBNSchedule
from .models import list_models
from .prepbnify import prepbnify
from .reparam import reparameterize_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "reparameterize_model", "prepbnify", "PRepBNSchedule", "__version__"]
