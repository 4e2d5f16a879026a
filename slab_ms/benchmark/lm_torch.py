"""The PyTorch side of the language-model rows: transformers' ``LlamaForCausalLM`` from a config dict, random
weights, float32, torch's default thread count (or ``--torch_threads``); answers "generate" as the MindSpore child
does. It imports neither MindSpore nor slab_ms, so any interpreter with torch and transformers can run it."""
import json
import sys
import time

if __package__:
    from .children import serve
else:  # run as a script by another interpreter, next to children.py
    from children import serve


def start(spec):
    """``spec``: config (transformers keys), prompt, new_tokens and threads (None: torch's own count); returns
    ``serve``'s pair."""
    import numpy as np
    import torch
    import transformers
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**spec["config"])).float().eval()
    vocab, new_tokens = spec["config"]["vocab_size"], spec["new_tokens"]

    def answer(kind, b):
        if kind != "generate":
            raise ValueError(f"unknown request {kind!r}")
        # the prompt of slab_ms.benchmark.lm_forms.prompt_ids
        ids = torch.from_numpy(np.random.default_rng(spec["prompt"]).integers(3, vocab, (b, spec["prompt"])))
        with torch.inference_mode():
            begin = time.perf_counter()
            out = model(ids, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            prefill = time.perf_counter() - begin
            past, start_time = out.past_key_values, None
            for i in range(1, new_tokens):
                if i == 2:  # as the MindSpore side: the first two single-token calls are not timed
                    start_time = time.perf_counter()
                out = model(token, past_key_values=past, use_cache=True, logits_to_keep=1)
                token, past = out.logits[:, -1].argmax(-1, keepdim=True), out.past_key_values
            decode = (time.perf_counter() - start_time) / (new_tokens - 2)
        return "seconds", [prefill, decode]

    return {"threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__}, answer


if __name__ == "__main__":
    serve(lambda: start(json.loads(sys.argv[1])))
