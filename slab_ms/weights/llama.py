"""Reference PRepBN-LLaMA state dicts -> a :class:`~slab_ms.models.llama.LlamaForCausalLM`, strictly.

The same conventions as the vision converter (:mod:`slab_ms.weights.official`): an official ``.pth`` (read
without torch), an ``.npz`` (keys starting with ``__`` skipped) or a dict; names by the type of the owning cell
(``official_parameters``), what the reference keeps besides by the family file's ``checkpoint_filter``; every
missing, unexpected and mis-shaped key is listed in one error; the per-norm PRepBN counters (``warm``, ``iter``,
``total_step``) set the model's one γ schedule: the vision converter's skeleton, with the decoder's headline.
"""
from .official import convert_state_dict, load_converted, read_state_dict

__all__ = ["convert_llama_state_dict", "load_official_llama"]


def convert_llama_state_dict(model, state_dict):
    """Returns ``(params, schedule, notes)``: MindSpore name -> Parameter, the γ schedule's (step, decay_steps,
    warmup_steps) or None (no PRepBN), and notes on what was dropped. Raises ValueError listing every missing,
    unexpected and mis-shaped key."""
    c = model.config
    return convert_state_dict(model, state_dict, headline=(
        f"The reference checkpoint does not fit this LLaMA (norm='{c.norm}', {c.num_hidden_layers} layers, "
        f"hidden {c.hidden_size}, vocab {c.vocab_size}, tied={c.tie_word_embeddings})"))


def load_official_llama(model, src):
    """Load a reference PRepBN-LLaMA checkpoint (path of a ``.pth`` / ``.npz``, or a dict) into ``model``."""
    return load_converted(model, *convert_llama_state_dict(model, read_state_dict(src)))
