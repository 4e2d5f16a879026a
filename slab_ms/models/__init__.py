"""SLAB model families; importing this registers every model in MindCV."""
from . import cswin
from . import deit
from . import pvt
from . import swin
from ._registry import list_models

__all__ = ["deit", "list_models"]
