"""Reference PRepBN-LLaMA state dicts -> a :class:`~slab_ms.models.llama.LlamaForCausalLM`, strictly.

The same conventions as the vision converter (:mod:`slab_ms.weights.official`): an official ``.pth`` (read
without torch), an ``.npz`` (keys starting with ``__`` skipped) or a dict; the names come from the family file
(``official_names``, ``checkpoint_filter``); every missing, unexpected and mis-shaped key is listed in one error;
the per-norm PRepBN counters (``warm``, ``iter``, ``total_step``) set the model's one γ schedule.
"""
import logging

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor

from ..layers import PRepBNSchedule, prepbn_layers
from ..models.registry import family_of
from .official import schedule_from_counters, read_state_dict
from .strict import mismatch_message

__all__ = ["convert_llama_state_dict", "load_official_llama"]

_logger = logging.getLogger(__name__)
_COUNTER_SUFFIXES = (".warm", ".iter", ".total_step")


def convert_llama_state_dict(model, state_dict):
    """Returns ``(params, schedule, notes)``: MindSpore name -> Parameter, the γ schedule's (step, decay_steps,
    warmup_steps) or None (no PRepBN), and notes on what was dropped. Raises ValueError listing every missing,
    unexpected and mis-shaped key."""
    family = family_of(model)  # the decoder's family file owns its names (this package imports no family)
    state, notes, mismatched = family.checkpoint_filter(state_dict, model)
    has_prepbn = bool(prepbn_layers(model))
    counters = {k: v for k, v in state.items() if k.endswith(_COUNTER_SUFFIXES)} if has_prepbn else {}
    used, missing, params = set(counters), [], {}
    for ms_name, (src_name, param) in family.official_names(model).items():
        if src_name not in state:
            missing.append(src_name)
            continue
        used.add(src_name)
        value = np.asarray(state[src_name])
        if tuple(value.shape) != tuple(param.shape):
            mismatched.append(f"{src_name}: source {tuple(value.shape)} vs model {tuple(param.shape)}")
            continue
        params[ms_name] = Parameter(Tensor(value.astype(param.asnumpy().dtype)), name=ms_name)
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
    params, schedule, notes = convert_llama_state_dict(model, read_state_dict(src))
    for note in notes:
        _logger.info(note)
    ms.load_param_into_net(model, params, strict_load=True)
    if schedule is not None:
        PRepBNSchedule.require(model).set(*schedule)
    return model
