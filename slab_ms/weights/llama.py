"""Reference PRepBN-LLaMA state dicts -> a :class:`~slab_ms.models.llama.LlamaForCausalLM`, strictly.

The same conventions as the vision converter (:mod:`slab_ms.weights.official`): an official ``.pth`` (read
without torch), an ``.npz`` (keys starting with ``__`` skipped) or a dict; names by the type of the owning cell
(``official_parameters``), what the reference keeps besides by the family file's ``checkpoint_filter``; every
missing, unexpected and mis-shaped key is listed in one error; the per-norm PRepBN counters (``warm``, ``iter``,
``total_step``) set the model's one γ schedule.
"""
from ..layers import prepbn_layers
from ..models.registry import family_of
from .official import load_converted, match_parameters, official_parameters, read_state_dict, schedule_from_counters
from .strict import mismatch_message

__all__ = ["convert_llama_state_dict", "load_official_llama"]

_COUNTER_SUFFIXES = (".warm", ".iter", ".total_step")


def convert_llama_state_dict(model, state_dict):
    """Returns ``(params, schedule, notes)``: MindSpore name -> Parameter, the γ schedule's (step, decay_steps,
    warmup_steps) or None (no PRepBN), and notes on what was dropped. Raises ValueError listing every missing,
    unexpected and mis-shaped key."""
    family = family_of(model)  # the decoder's family file owns its names (this package imports no family)
    state, notes, mismatched = family.checkpoint_filter(state_dict, model)
    has_prepbn = bool(prepbn_layers(model))
    counters = {k: v for k, v in state.items() if k.endswith(_COUNTER_SUFFIXES)} if has_prepbn else {}
    params, used, missing, more_mismatched = match_parameters(official_parameters(model), state)
    used |= set(counters)
    mismatched += more_mismatched
    schedule, schedule_notes = schedule_from_counters(counters) if has_prepbn else (None, [])
    if has_prepbn and schedule is None:
        missing.append("<PRepBN counters: *.iter, *.total_step>")
    unexpected = [k for k in state if k not in used]
    if missing or unexpected or mismatched:
        c = model.config
        raise ValueError(mismatch_message(
            f"The reference checkpoint does not fit this LLaMA (norm='{c.norm}', {c.num_hidden_layers} layers, "
            f"hidden {c.hidden_size}, vocab {c.vocab_size}, tied={c.tie_word_embeddings})",
            missing, unexpected, mismatched))
    return params, schedule, notes + schedule_notes


def load_official_llama(model, src):
    """Load a reference PRepBN-LLaMA checkpoint (path of a ``.pth`` / ``.npz``, or a dict) into ``model``."""
    return load_converted(model, *convert_llama_state_dict(model, read_state_dict(src)))
