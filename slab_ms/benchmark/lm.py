"""The language-model rows (``--lm``): the paper's Sec. 5.3 latency claim for ``llama_350m``, batch 1.

Forms (random weights, evaluation, GRAPH_MODE): ``rmsnorm``, the LLaMA baseline, and ``prepbn_deploy``, the
PRepBN decoder folded by ``reparameterize_model`` (no norm left; RepBN at the vision initialisation, η = 1, so the
fold is not a zero map); ``--torch`` adds transformers' ``LlamaForCausalLM`` built from the same sizes (the
reference config.json's), run by ``--torch_python`` at torch's own thread count (or ``--torch_threads N``). Each
form runs in its own child process (its peak memory is that child's VmHWM) and each round asks every child for one
greedy generation of ``--lm_new_tokens`` tokens after a random prompt of ``--lm_prompt`` tokens with a key/value
cache: the prefill is the call over the prompt that fills the cache and chooses the first new token (the head on
the last position only, as transformers' generate does with ``logits_to_keep=1``); decode tokens/s counts the
single-token calls from the third new token on (the first two compile in MindSpore; both sides skip them alike).
Rounds are interleaved after ``--warmup`` untimed ones; ratios are time ratios (lower is faster): against the
RMSNorm model paired per round (median over rounds), against torch of the medians. ``--quick``: ``llama_tiny``, a
16-token prompt and 8 new tokens.

The MindSpore child is ``python -m slab_ms.benchmark.lm_forms SPEC``; the torch child is ``lm_torch.py`` next to
this file (standard library, torch and transformers only).
"""
import csv
import dataclasses
import os
import sys
import time

import numpy as np

from .children import Child, stop_all

LM_FORMS = ("rmsnorm", "prepbn_deploy")
LM_LABELS = {"rmsnorm": "RMSNorm", "prepbn_deploy": "PRepBN, folded", "torch": "transformers (torch), RMSNorm"}
LM_MODEL, LM_QUICK_MODEL = "llama_350m", "llama_tiny"
QUICK_PROMPT, QUICK_NEW_TOKENS = 16, 8
TORCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lm_torch.py")
# The transformers config keys that fix the computation of a LLaMA decoder.
TRANSFORMERS_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings", "rms_norm_eps", "rope_theta", "hidden_act", "tie_word_embeddings",
                     "pad_token_id", "bos_token_id", "eos_token_id", "initializer_range")


def add_arguments(parser):
    parser.add_argument("--lm", action="store_true",
                        help=f"time the LLaMA decoder ({LM_MODEL}: RMSNorm vs folded PRepBN, prefill and greedy "
                             "decode with a KV cache at batch 1) instead of the vision families")
    parser.add_argument("--lm_prompt", type=int, default=512, help="--lm: prompt tokens (the prefill)")
    parser.add_argument("--lm_new_tokens", type=int, default=64,
                        help="--lm: tokens generated per round (decode rate over the 3rd to the last)")


def check_arguments(parser, args):
    if not args.lm:
        return
    if args.torch_threads == "best":
        parser.error("--torch_threads best searches per vision form; with --lm give a count")
    from ..models.llama import CONFIGS, LlamaConfig
    if args.lm_prompt < 1 or args.lm_new_tokens < 3:
        parser.error(f"--lm_prompt must be >= 1 and --lm_new_tokens >= 3 (the decode rate skips the first two), "
                     f"got {args.lm_prompt} and {args.lm_new_tokens}")
    limit = LlamaConfig.from_dict(CONFIGS[LM_MODEL]).max_position_embeddings
    if not args.quick and args.lm_prompt + args.lm_new_tokens > limit:
        parser.error(f"--lm_prompt + --lm_new_tokens must be <= {limit} ({LM_MODEL}'s max_position_embeddings), "
                     f"got {args.lm_prompt + args.lm_new_tokens}")


def lm_shape(args):
    """(model name, prompt tokens, new tokens) of this run."""
    if args.quick:
        return LM_QUICK_MODEL, QUICK_PROMPT, QUICK_NEW_TOKENS
    return LM_MODEL, args.lm_prompt, args.lm_new_tokens


def transformers_config(name):
    """The transformers config dict of our named config (the same sizes, eps and rope base)."""
    from ..models.llama import CONFIGS, LlamaConfig
    config = dataclasses.asdict(LlamaConfig.from_dict(CONFIGS[name]))
    return dict({k: config[k] for k in TRANSFORMERS_KEYS}, model_type="llama")


# ------------------------------------------------------------------------------------------ the driver
def lm_children(args, use_torch, torch_env):
    name, prompt, new_tokens = lm_shape(args)
    spec = {"model": name, "prompt": prompt, "new_tokens": new_tokens}
    from . import mindspore_environment
    children = {}
    for form in LM_FORMS:
        print(f"\rLLaMA: starting {form:60}", end="", file=sys.stderr, flush=True)
        children[form] = Child([sys.executable, "-m", "slab_ms.benchmark.lm_forms"],
                               dict(spec, form=form, threads=args.runtime_num_threads), mindspore_environment())
    if use_torch:
        print(f"\rLLaMA: starting torch {' ':54}", end="", file=sys.stderr, flush=True)
        children["torch"] = Child([args.torch_python, TORCH_SCRIPT],
                                  dict(spec, config=transformers_config(name), threads=args.torch_threads), torch_env)
    return children


def run(args, use_torch, torch_env=None):
    """Interleaved rounds of every LM child; returns the JSON-ready result dict."""
    name, prompt, new_tokens = lm_shape(args)
    load_start = os.getloadavg()
    samples, peaks, ready = {}, {}, {}
    children = {}
    try:
        children = lm_children(args, use_torch, torch_env)
        ready = {form: child.ready for form, child in children.items()}
        started = time.perf_counter()
        for r in range(args.warmup + args.repeats):
            for form, child in children.items():
                value = child.ask("generate", 1)
                if r >= args.warmup:
                    samples.setdefault(form, []).append(value)
            stage = "warm-up" if r < args.warmup else "round"
            number = r + 1 if r < args.warmup else r + 1 - args.warmup
            print(f"\r[{time.perf_counter() - started:5.0f}s] LLaMA {stage} {number}{' ':60}", end="",
                  file=sys.stderr, flush=True)
        for form, child in children.items():
            peaks[form] = child.ask("peak")
    finally:
        stop_all(children.values())
        print(file=sys.stderr, flush=True)
    return summarise(args, name, prompt, new_tokens, samples, peaks, ready, load_start, os.getloadavg())


def summarise(args, name, prompt, new_tokens, samples, peaks, ready, load_start, load_end):
    rows = []
    base = np.asarray(samples["rmsnorm"])
    for form, values in samples.items():
        values = np.asarray(values)  # rounds × (prefill s, decode s per token)
        prefill_ms, decode_ms = values[:, 0] * 1e3, values[:, 1] * 1e3
        q1, ratio, q3 = np.percentile(values / base, [25, 50, 75], axis=0)
        row = {"family": "llama", "model": name, "form": form, "form_label": LM_LABELS[form], "batch_size": 1,
               "prompt_tokens": prompt, "new_tokens": new_tokens, "timed_tokens": new_tokens - 2,
               "prefill_median_ms": float(np.median(prefill_ms)), "prefill_min_ms": float(prefill_ms.min()),
               "prefill_max_ms": float(prefill_ms.max()), "decode_ms_per_token": float(np.median(decode_ms)),
               "decode_tokens_per_s": float(1e3 / np.median(decode_ms)),
               "decode_tokens_per_s_min": float(1e3 / decode_ms.max()),
               "decode_tokens_per_s_max": float(1e3 / decode_ms.min()),
               "samples_prefill_ms": [round(float(v), 3) for v in prefill_ms],
               "samples_decode_ms_per_token": [round(float(v), 3) for v in decode_ms],
               "prefill_ratio_vs_rmsnorm_paired": float(ratio[0]), "prefill_ratio_q1": float(q1[0]),
               "prefill_ratio_q3": float(q3[0]), "decode_time_ratio_vs_rmsnorm_paired": float(ratio[1]),
               "decode_ratio_q1": float(q1[1]), "decode_ratio_q3": float(q3[1]),
               "peak_rss_mb": peaks.get(form), "threads": (ready.get(form) or {}).get("threads")}
        rows.append(row)
    torch_row = next((r for r in rows if r["form"] == "torch"), None)
    for row in rows:
        if torch_row:
            row["prefill_ratio_vs_torch"] = row["prefill_median_ms"] / torch_row["prefill_median_ms"]
            row["decode_time_ratio_vs_torch"] = row["decode_ms_per_token"] / torch_row["decode_ms_per_token"]
    meta = {"lm": True, "model": name, "quick": args.quick, "repeats": args.repeats, "warmup": args.warmup,
            "threads": args.runtime_num_threads, "cpu_count": os.cpu_count(),
            "load_average_start": list(load_start), "load_average_end": list(load_end)}
    if torch_row:
        meta["torch"] = {"python": args.torch_python, **ready["torch"]}
    return {"meta": meta, "results": rows}


def table(result):
    meta = result["meta"]
    rows = result["results"]
    first = rows[0]
    lines = [f"LLaMA {meta['model']}, batch 1: prefill of a {first['prompt_tokens']}-token prompt (fills the KV cache, "
             f"chooses the first token), then greedy decode of {first['new_tokens']} new tokens with the cache "
             f"(rate over tokens 3-{first['new_tokens']})"]
    head = (f"{'form':32} {'prefill ms (min-max)':>26} {'decode tok/s (min-max)':>24} {'MB':>6}"
            f" {'prefill xRMS':>12} {'decode xRMS':>11}")
    has_torch = any(r["form"] == "torch" for r in rows)
    if has_torch:
        head += f" {'prefill /torch':>14} {'decode /torch':>13}"
    lines += [head, "-" * len(head)]
    for r in rows:
        prefill = f"{r['prefill_median_ms']:.1f} ({r['prefill_min_ms']:.1f}-{r['prefill_max_ms']:.1f})"
        decode = (f"{r['decode_tokens_per_s']:.2f} ({r['decode_tokens_per_s_min']:.2f}-"
                  f"{r['decode_tokens_per_s_max']:.2f})")
        peak = f"{r['peak_rss_mb']:6.0f}" if r.get("peak_rss_mb") else " " * 6
        line = (f"{r['form_label']:32} {prefill:>26} {decode:>24} {peak}"
                f" {r['prefill_ratio_vs_rmsnorm_paired']:12.2f} {r['decode_time_ratio_vs_rmsnorm_paired']:11.2f}")
        if has_torch:
            line += f" {r['prefill_ratio_vs_torch']:14.2f} {r['decode_time_ratio_vs_torch']:13.2f}"
        lines.append(line)
    lines.append("xRMS: this time / the RMSNorm model's in the same round, median over rounds (decode: time per "
                 "token); /torch: ratio of the medians; lower is faster; MB: the child's peak RSS")
    if has_torch:
        lines.append(f"torch: {meta['torch'].get('python')}, torch {meta['torch'].get('torch')}, transformers "
                     f"{meta['torch'].get('transformers')}, {meta['torch'].get('threads')} threads (its default); "
                     f"MindSpore: {meta['threads']} op threads")
    return "\n".join(lines)


CSV_FIELDS = ("family", "model", "form", "batch_size", "prompt_tokens", "new_tokens", "prefill_median_ms",
              "prefill_min_ms", "prefill_max_ms", "decode_tokens_per_s", "decode_ms_per_token", "peak_rss_mb",
              "prefill_ratio_vs_rmsnorm_paired", "decode_time_ratio_vs_rmsnorm_paired", "prefill_ratio_vs_torch",
              "decode_time_ratio_vs_torch")


def write_csv(result, path):
    """One row per form."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["results"])
