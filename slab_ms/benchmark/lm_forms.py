"""The MindSpore side of the language-model rows: a child process that builds one LLaMA form (``rmsnorm`` or the
folded ``prepbn_deploy``) and answers "generate" requests. Run by the driver as
``python -m slab_ms.benchmark.lm_forms SPEC``."""
import json
import sys

import numpy as np
import mindspore as ms

from .. import cli, reparameterize_model
from ..layers import PRepBNSchedule
from ..models.llama import GreedyGenerator, create_llama
from .children import serve


def build(name, form):
    """``name`` with RMSNorm, or with PRepBN (its schedule finished, RepBN at η = 1) folded."""
    ms.set_seed(0)
    if form == "rmsnorm":
        return create_llama(name, norm="rmsnorm").set_train(False)
    net = create_llama(name, norm="prepbn", bn_zero_init=False).set_train(False)
    c = net.config
    PRepBNSchedule.of(net).set(step=c.prepbn_warmup_steps + c.prepbn_decay_steps)
    return reparameterize_model(net, inplace=True)  # no second copy of the weights in this child's peak


def prompt_ids(batch_size, length, vocab_size):
    """The random prompt every form reads (ids 3 and up: no pad / bos / eos)."""
    return np.random.default_rng(length).integers(3, vocab_size, (batch_size, length)).astype(np.int32)


def start(spec):
    """Build ``spec["form"]`` of ``spec["model"]`` with ``spec["threads"]`` op threads; answers "generate" with
    [prefill seconds, decode seconds per token]."""
    cli.cpu_graph_mode(spec["threads"])
    net = build(spec["model"], spec["form"])
    generator = GreedyGenerator(net)

    def answer(kind, b):
        if kind != "generate":
            raise ValueError(f"unknown request {kind!r}")
        _, stats = generator(prompt_ids(b, spec["prompt"], net.config.vocab_size), spec["new_tokens"], True)
        return "seconds", [stats["prefill_seconds"], stats["seconds"] / stats["timed_tokens"]]

    return {"threads": spec["threads"]}, answer


if __name__ == "__main__":
    serve(lambda: start(json.loads(sys.argv[1])))
