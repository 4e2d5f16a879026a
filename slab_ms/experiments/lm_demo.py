"""Corpus demo of PRepBN for language models: one small byte-level LLaMA trained with RMSNorm, one with PRepBN.

    bash scripts/run_lm_demo.sh            # or: python -m slab_ms.experiments.lm_demo
    python -m slab_ms.experiments.lm_demo --quick      # a tiny run in well under a minute (used by the tests)

The corpus is Python's own reference documentation (``pydoc_data.topics``, English prose and grammar that ships
with every CPython; ``--corpus FILE`` reads a UTF-8 text file instead), tokenised as bytes (ids = byte + 3; 0, 1,
2 are pad, bos and eos). The last 10 % of the text is the validation split. Both models see the same batches in
the same order. PRepBN's γ is 1 (RMSNorm only) for the first 10 % of the optimizer steps, decays linearly to 0
over the next 70 % (advanced inside the compiled train step, checked every step by ``GammaDecay``) and is 0 (pure
RepBN) for the last 20 %. The demo prints progress lines, the validation perplexity of both models (PRepBN in its
evaluation form, pure RepBN, and after folding every norm into the projections), the generation speed with a
key/value cache of the RMSNorm model and of the folded PRepBN model, and a few generated lines.
Bad input is one ``lm_demo: error: ...`` line and exit status 2.

Two choices are the demo's, not the reference's: RepBN starts as in the vision models (``--bn_init ones``: η = 1,
BN weight 1), because the reference LLaMA's zero start (η, weight, bias 0) cannot grow within a few hundred Adam
steps (150 steps: validation perplexity 40.2 from zeros, 11.7 from ones); and MindSpore runs one CPU thread
(``--threads 1``), because on a shared 2-core machine its default thread pool made one single-token decoding call
take 40-90 ms instead of 4-5 ms (measured with the runtime-thread setting; the op-thread setting that replaced it
decoded at the same speed within the machine's noise, 3 alternating runs each, load 7).
"""
import argparse
import functools
import math
import os
import sys
import time

import numpy as np

from .. import cli

TOOL = "lm_demo"
PROMPT_BYTES = 24
print_now = functools.partial(print, flush=True)

FULL = dict(steps=400, batch_size=8, seq_len=128, layers=4, hidden=192, heads=4, intermediate=512, lr=2e-3,
            gen_tokens=160, log_interval=25, eval_batches=40, threads=1)
QUICK = dict(steps=24, batch_size=4, seq_len=32, layers=2, hidden=32, heads=2, intermediate=64, lr=3e-3,
             gen_tokens=12, log_interval=8, eval_batches=2, threads=1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=TOOL, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    cli.add_budget_args(parser, FULL, QUICK, "a tiny model and a few steps (seconds, for tests)")
    parser.add_argument("--corpus", default=None, help="UTF-8 text file (default: Python's pydoc_data.topics)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bn_init", choices=("ones", "zeros"), default="ones",
                        help="RepBN start: 'ones' (η = 1, BN weight 1, as the vision models) or 'zeros' (η, weight and "
                             "bias 0, as the reference LLaMA, which trained for 28,000 steps)")
    parser.add_argument("--norms", default="rmsnorm,prepbn",
                        help="comma-separated norms to train (rmsnorm, repbn, prepbn)")
    args = parser.parse_args(argv)
    return cli.apply_budget(args, FULL, QUICK)


def check_args(args):
    from ..cli import UsageError
    for name in ("threads", "steps", "batch_size", "seq_len", "layers", "hidden", "heads", "intermediate", "gen_tokens",
                 "log_interval", "eval_batches"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.steps < 10:
        raise UsageError(f"--steps must be >= 10 (the γ schedule needs room to decay), got {args.steps}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    if args.hidden % args.heads or (args.hidden // args.heads) % 2:
        raise UsageError(f"--hidden {args.hidden} must split into --heads {args.heads} heads of an even size")
    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    bad = [n for n in norms if n not in ("rmsnorm", "repbn", "prepbn")]
    if not norms or bad:
        raise UsageError(f"--norms takes rmsnorm, repbn and prepbn, got '{args.norms}'")
    args.norms = norms
    if args.corpus is not None and not os.path.isfile(args.corpus):
        raise UsageError(f"--corpus '{args.corpus}' is not a file")


# ----------------------------------------------------------------------------------------------- data
def load_corpus(path=None):
    """The corpus as bytes, and where it came from."""
    if path is None:
        from pydoc_data.topics import topics
        text = "\n\n".join(topics[key] for key in sorted(topics))
        source = "pydoc_data.topics (Python's reference documentation)"
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        source = path
    return text.encode("utf-8"), source


def encode(data):
    return np.frombuffer(data, np.uint8).astype(np.int32) + 3


def decode(ids):
    ids = np.asarray(ids)
    return bytes(int(i) - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")


def prompt_from(data, length):
    """The first ``length`` bytes of the first line of prose in ``data`` (a line starting "The "), as ids."""
    at = data.find(b"\nThe ")
    return encode(data[at + 1 if at >= 0 else 0:][:length])


class Batches:
    """Random windows of ``seq_len + 1`` tokens from the training split; the same sequence for every model."""

    def __init__(self, ids, batch_size, seq_len, seed):
        self.ids, self.batch_size, self.seq_len = ids, batch_size, seq_len
        self.rng = np.random.default_rng(seed)

    def next(self):
        starts = self.rng.integers(0, len(self.ids) - self.seq_len - 1, self.batch_size)
        windows = np.stack([self.ids[s:s + self.seq_len + 1] for s in starts])
        return windows[:, :-1], windows[:, 1:]


def eval_windows(ids, batch_size, seq_len, max_batches):
    """Consecutive non-overlapping windows of the validation split, in batches."""
    n = (len(ids) - 1) // seq_len
    windows = [ids[i * seq_len:i * seq_len + seq_len + 1] for i in range(n)]
    batches = [np.stack(windows[i:i + batch_size]) for i in range(0, n - batch_size + 1, batch_size)]
    return batches[:max_batches]


# ---------------------------------------------------------------------------------------------- training
def build(args, norm, vocab_size):
    from ..models import create_llama
    warmup, decay = args.steps // 10, (args.steps * 7) // 10
    return create_llama("llama_demo", vocab_size=vocab_size, hidden_size=args.hidden,
                        intermediate_size=args.intermediate,
                        num_hidden_layers=args.layers, num_attention_heads=args.heads,
                        max_position_embeddings=max(args.seq_len, PROMPT_BYTES + args.gen_tokens), norm=norm,
                        prepbn_decay_steps=decay, prepbn_warmup_steps=warmup, bn_zero_init=args.bn_init == "zeros")


def train_one(args, norm, train_ids, val_batches, vocab_size):
    import mindspore as ms
    from mindspore import Tensor, nn

    from ..models import CausalLMLoss
    from ..training import NetWithLoss, TrainStep, param_groups
    from ..training.callbacks import format_seconds
    from .train_steps import train_steps, warmup_cosine_lr

    ms.set_seed(args.seed)
    net = build(args, norm, vocab_size)
    n_params = sum(int(np.prod(p.shape)) for p in net.trainable_params())
    net_with_loss = NetWithLoss(net, CausalLMLoss(vocab_size))
    lrs = warmup_cosine_lr(args.steps, args.lr)
    optimizer = nn.AdamWeightDecay(param_groups(net, 0.1), learning_rate=Tensor(lrs), beta1=0.9, beta2=0.95)
    step = TrainStep(net_with_loss, optimizer, net, clip_grad=1.0)
    print_now(f"[{norm}] {args.layers} layers x {args.hidden}, {n_params:,} parameters; {args.steps} steps of "
              f"{args.batch_size} x {args.seq_len} tokens")
    batches = Batches(train_ids, args.batch_size, args.seq_len, args.seed)
    train_seconds, _ = train_steps(step, net, (batches.next() for _ in range(args.steps)), lrs, args.log_interval,
                                   args.batch_size * args.seq_len, lambda msg: print_now(f"[{norm}] {msg}"),
                                   unit="tok")
    ppl = perplexity(net_with_loss, val_batches)
    print_now(f"[{norm}] validation perplexity {ppl:.3f} (bits per byte {math.log2(ppl):.3f}); trained in "
              f"{format_seconds(train_seconds)}")
    return net, ppl, train_seconds


def perplexity(net_with_loss, batches):
    from mindspore import Tensor
    losses = [float(net_with_loss(Tensor(b[:, :-1]), Tensor(b[:, 1:])).asnumpy()) for b in batches]
    return float(math.exp(np.mean(losses)))


def generation(net, prompt, n_tokens, label):
    from ..models import generate
    out, stats = generate(net, prompt[None, :], n_tokens, use_cache=True, return_stats=True)
    print_now(f"[{label}] greedy generation with the key/value cache: {stats['tokens_per_s']:.1f} tokens/s "
              f"(batch 1, {stats['timed_tokens']} timed tokens; the calls that compile are not timed)")
    return out[0], stats["tokens_per_s"]


def _demo(argv):
    args = parse_args(argv)
    check_args(args)
    from .. import reparameterize_model
    from ..reparam import remaining_norms

    cli.cpu_graph_mode(args.threads)
    wall = time.perf_counter()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    data, source = load_corpus(args.corpus)
    ids = encode(data)
    if len(ids) < 20 * (args.seq_len + 1):
        from ..cli import UsageError
        raise UsageError(f"the corpus has {len(ids)} bytes; it needs at least {20 * (args.seq_len + 1)} for "
                         f"--seq_len {args.seq_len}")
    split = int(len(ids) * 0.9)
    train_ids, val_ids = ids[:split], ids[split:]
    val_batches = eval_windows(val_ids, args.batch_size, args.seq_len, args.eval_batches)
    vocab = 259
    print_now(f"corpus: {source}: {len(ids):,} bytes ({len(train_ids):,} train, {len(val_ids):,} validation; "
              f"{len(val_batches) * args.batch_size * args.seq_len:,} validation tokens used); "
              f"byte-level vocab {vocab}; "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    prompt = prompt_from(data[split:], PROMPT_BYTES)
    results = {}
    for norm in args.norms:
        t0 = time.perf_counter()
        net, ppl, seconds = train_one(args, norm, train_ids, val_batches, vocab)
        entry = dict(ppl=ppl, train_seconds=seconds)
        gen_net = net
        if norm != "rmsnorm":
            deploy = reparameterize_model(net)
            left = remaining_norms(deploy)
            if left:
                raise RuntimeError(f"[{norm}] norms left after folding: {left}")
            deploy_ppl = perplexity(_loss_wrapper(deploy, vocab), val_batches)
            print_now(f"[{norm}] folded (no norm cell left): validation perplexity {deploy_ppl:.3f}")
            entry["deploy_ppl"] = deploy_ppl
            gen_net = deploy
        tokens, rate = generation(gen_net, prompt, args.gen_tokens, f"{norm}{' folded' if norm != 'rmsnorm' else ''}")
        entry["tokens_per_s"] = rate
        text = decode(tokens)
        lines = [line for line in text.splitlines() if line.strip()][:4]
        print_now(f"[{norm}] prompt {decode(prompt)!r} ->")
        for line in lines:
            print_now(f"    | {line}")
        entry["wall_seconds"] = time.perf_counter() - t0
        results[norm] = entry
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    print_now("summary:")
    for norm, e in results.items():
        extra = f", folded {e['deploy_ppl']:.3f}" if "deploy_ppl" in e else ""
        print_now(f"  {norm:8s} validation perplexity {e['ppl']:.3f}{extra}; "
                  f"generation {e['tokens_per_s']:.1f} tokens/s"
                  f"{' (folded)' if 'deploy_ppl' in e else ''}; train {e['train_seconds']:.0f} s, total "
                  f"{e['wall_seconds']:.0f} s")
    if "rmsnorm" in results and "prepbn" in results:
        rel = results["prepbn"]["ppl"] / results["rmsnorm"]["ppl"] - 1
        speed = results["prepbn"]["tokens_per_s"] / results["rmsnorm"]["tokens_per_s"] - 1
        caveat = (f" (--quick: {args.steps} steps of a tiny model test that the demo runs; these numbers say "
                  "nothing about quality or speed)" if args.quick else "")
        print_now(f"  PRepBN vs RMSNorm: perplexity {rel:+.1%}, generation speed {speed:+.1%}{caveat}")
    print_now(f"wall time {time.perf_counter() - wall:.0f} s; load average at the end {load_end[0]:.2f} "
              f"{load_end[1]:.2f} {load_end[2]:.2f}")
    return 0


def _loss_wrapper(net, vocab):
    from ..models import CausalLMLoss
    from ..training import NetWithLoss
    return NetWithLoss(net, CausalLMLoss(vocab))


def main(argv=None):
    from ..cli import run
    return run(TOOL, _demo, argv)


if __name__ == "__main__":
    sys.exit(main())
