"""SLAB model families; importing this registers every model in MindCV (the only module that imports them all)."""
from . import cswin, deit, pvt, swin
from .registry import family_of, is_slab_model, list_models, tiny_config

__all__ = ["list_models", "family_of", "is_slab_model", "tiny_config"]
