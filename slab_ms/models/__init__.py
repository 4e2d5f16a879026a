"""SLAB model families: importing this imports every family module of this folder, which registers its models
in MindCV. A new family is one new file here (``docs/architecture.md``); nothing else imports the families."""
import importlib
import pkgutil

from .registry import family_of, is_slab_model, list_models, tiny_config

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("registry", "__main__"):
        importlib.import_module(f"{__name__}.{_module.name}")

from .llama import CausalLMLoss, create_llama, generate  # noqa: E402  (the language model's builder and tools)

__all__ = ["list_models", "family_of", "is_slab_model", "tiny_config", "create_llama", "generate", "CausalLMLoss"]
