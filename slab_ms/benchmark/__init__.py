"""Inference latency, throughput, FLOP rate and peak memory of the SLAB families and their baselines.

    python -m slab_ms.benchmark [--families deit swin pvt cswin] [--forms ...] [--batch_sizes 1 8]
        [--repeats 7] [--warmup 3] [--runtime_num_threads N] [--train] [--torch] [--profile] [--json F] [--csv F] [--plot F.png]

Forms per family (random weights, eval mode, GRAPH_MODE): ``ln`` LayerNorm + softmax attention (the
baseline), ``prepbn`` PRepBN in training form (eval: RepBN with its statistics), ``prepbn_deploy``
(``reparameterize_model``: every norm folded away), ``slab`` (PRepBN + SLA, training form) and
``slab_deploy``. CSwin has no PRepBN-only release; its baseline and PRepBN forms are
``slab_cswin_tiny`` with softmax stripes (the CSWin-T layout).

Method. Every model runs in its own child process (which also gives its peak memory: the child's
own maximum resident set, VmHWM, including MindSpore's runtime, so compare models, not absolute numbers with
other tools). Per family and batch size the baseline, two other forms and a GEMM reference (a
chain of 24 (1568×192)·(192×768) matmuls in one graph) are alive together and, after ``--warmup``
untimed rounds, timed in interleaved rounds (each round runs each of them once), so a change in machine
load hits all of them alike;
the baseline takes part in every group, and each speed-up is taken against the baseline of its own
group. The table reports medians with min–max, and below it each form's paired time ratio: its time over
the baseline's in the same round, median and quartiles over the rounds (the host's slow phases hit both
sides of a pair, so this spread says how far to trust a ratio). FLOPs are counted per model from the shapes of one
batch-1 forward in PyNative mode: Dense and Conv2d layers from their weights and outputs, the
attention products by the reference formulas (softmax: Q Kᵀ and A V; SLA: Kᵀ V and Q (Kᵀ V), or
(Q Kᵀ) V when N ≤ head_dim, the normaliser and the 5×5 depth-wise conv); element-wise work is not
counted. GFLOP/s = FLOPs / median latency; "of GEMM" is that rate over the same group's GEMM rate.

``--lm`` times the LLaMA decoder instead (``llama_350m``: RMSNorm vs folded PRepBN, prefill and greedy decode with
the KV cache at batch 1; ``--torch``: transformers' ``LlamaForCausalLM`` alongside; see ``slab_ms.benchmark.lm``).

``--train`` adds one optimizer step (SGD, cross-entropy, random labels) of the training forms
(``ln``, ``prepbn``, ``slab``); ``--torch`` adds timm's ``deit_tiny_patch16_224`` /
``swin_tiny_patch4_window7_224`` (when torch and timm import) with the same thread count, timed in
the baseline's group; ``--profile`` prints MindSpore's per-op-type profile of each model at the
largest batch size. Exit status 0 after a run; bad arguments: one message, exit status 2.
"""
import argparse
import os
import sys
import time

from . import lm
from .children import Child
from .families import FAMILIES, FORMS, GEMM, TRAINING_FORMS
from .report import plot, table, write_csv, write_json
from .stats import summarise

__all__ = ["FAMILIES", "FORMS", "main"]
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def torch_available():
    """Whether torch and timm import (timm may fail at import with a mismatched torchvision)."""
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001  (any import failure means: no PyTorch comparison)
        return False
    return True


def mindspore_environment():
    """The environment of a MindSpore child: this package first on its path."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p))


def mindspore_child(member, args, flops):
    """A child process timing ``member`` (a (family, form) pair or the GEMM reference) with MindSpore."""
    spec = {"member": member, "threads": args.runtime_num_threads, "jit_level": args.jit_level, "quick": args.quick,
            "flops": flops}
    return Child([sys.executable, "-m", "slab_ms.benchmark.ms_forms"], spec, mindspore_environment())


def torch_child(model_name, threads):
    """A child process timing timm's ``model_name``."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_forms.py")
    return Child([sys.executable, script], {"model": model_name, "threads": threads})


def parse_args(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS),
                        help="forms to time (the ln baseline is always included)")
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7, help="timed interleaved rounds (median, min, max reported)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed interleaved rounds first (the first compiles; the next ones still ran 10-30 %% "
                             "slower on a 2-core machine as memory pools and caches fill)")
    parser.add_argument("--runtime_num_threads", "--threads", type=int, default=2 * (os.cpu_count() or 1),
                        help="MindSpore CPU op threads (default: 2 per CPU core, the best of 2/3/4/6/8 measured "
                             "on a 2-core machine); also torch's threads for --torch (--threads: the same)")
    parser.add_argument("--jit_level", choices=("O0", "O1", "O2"), default=None,
                        help="MindSpore jit_level (default: MindSpore's own)")
    parser.add_argument("--train", action="store_true", help="also time one training step of the training forms")
    parser.add_argument("--torch", action="store_true", help="also time timm's DeiT-T / Swin-T (needs torch and timm)")
    parser.add_argument("--profile", action="store_true",
                        help="print MindSpore's per-op-type profile of each model at the largest batch size")
    parser.add_argument("--quick", action="store_true", help="narrow, shallow models: a smoke test, not numbers")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--csv", metavar="FILE", help="write one row per model and batch size as CSV")
    parser.add_argument("--plot", metavar="FILE.png", help="latency bars per family with the baseline line")
    parser.add_argument("--torch_python", metavar="PYTHON", default=sys.executable,
                        help="the interpreter of the PyTorch children (default: this one)")
    lm.add_arguments(parser)
    args = parser.parse_args(argv)
    lm.check_arguments(parser, args)
    if args.lm and args.plot:
        parser.error("--plot draws the vision families; it does not go with --lm")
    for name in ("repeats", "warmup", "runtime_num_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if min(args.batch_sizes) < 1:
        parser.error(f"--batch_sizes must be positive, got {args.batch_sizes}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib (pip install matplotlib)")
    for path in (args.json, args.csv, args.plot):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            parser.error(f"cannot write '{path}': its folder does not exist")
    args.batch_sizes = sorted(set(args.batch_sizes))
    args.forms = ["ln"] + [f for f in FORMS if f in args.forms and f != "ln"]
    return args


def _groups(forms, size=2):
    """The non-baseline forms in groups of ``size``, each timed next to the baseline."""
    others = [f for f in forms if f != "ln"]
    return [others[i:i + size] for i in range(0, len(others), size)] or [[]]


class Progress:
    def __init__(self, total):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def step(self, text):
        self.done += 1
        line = f"[{self.done}/{self.total} {time.perf_counter() - self.start:5.0f}s] {text}"
        print(f"\r{line[:110]:110}", end="", file=sys.stderr, flush=True)

    def close(self):
        print(file=sys.stderr, flush=True)


def run(args):
    """Measure everything; returns the JSON-ready result dict."""
    use_torch = args.torch and torch_available()
    groups = {family: _groups(args.forms) for family in args.families}
    rounds = len(args.batch_sizes) * args.repeats * (2 if args.train else 1)
    progress = Progress(sum(len(g) for g in groups.values()) * rounds)
    samples, train_samples, peaks, flops, profiles = {}, {}, {}, {}, {}
    load_start = os.getloadavg()
    for family in args.families:
        for index, group in enumerate(groups[family]):
            members = [(family, "ln")] + [(family, form) for form in group] + [GEMM]
            if use_torch and index == 0 and FAMILIES[family][1]:
                members.append((family, "torch"))
            children = {}
            try:
                for member in members:
                    progress_text = f"{FAMILIES[family][0]}: starting {member if member == GEMM else member[1]}"
                    print(f"\r{progress_text[:110]:110}", end="", file=sys.stderr, flush=True)
                    if member != GEMM and member[1] == "torch":
                        children[member] = torch_child(FAMILIES[family][1], args.runtime_num_threads)
                    else:
                        children[member] = mindspore_child(member, args, flops.get(member))
                        flops[member] = children[member].ready
                for b in args.batch_sizes:
                    for _ in range(args.warmup):  # compile, then fill memory pools and caches
                        for child in children.values():
                            child.ask("time", b)
                    for r in range(args.repeats):
                        for member, child in children.items():
                            key = (index, member, b)
                            samples.setdefault(key, []).append(child.ask("time", b))
                        progress.step(f"{FAMILIES[family][0]} group {index + 1} b={b} round {r + 1}/{args.repeats}")
                    for member, child in children.items():
                        peaks[(member, b)] = max(peaks.get((member, b), 0.0), child.ask("peak"))
                if args.train:
                    trainable = {m: c for m, c in children.items() if m != GEMM and m[1] in TRAINING_FORMS}
                    for b in args.batch_sizes:
                        for child in trainable.values():
                            child.ask("train", b)
                        for r in range(args.repeats):
                            for member, child in trainable.items():
                                train_samples.setdefault((member, b), []).append(child.ask("train", b))
                            progress.step(f"{FAMILIES[family][0]} group {index + 1} training b={b} round {r + 1}")
                if args.profile:
                    for member, child in children.items():
                        if member != GEMM and member[1] != "torch" and member not in profiles:
                            profiles[member] = child.ask("profile", args.batch_sizes[-1])
            finally:
                for child in children.values():
                    try:
                        child.stop()
                    except (EOFError, OSError, RuntimeError):
                        child.kill()
    progress.close()
    return summarise(args, samples, train_samples, peaks, flops, profiles, load_start, os.getloadavg(),
                     use_torch)


def main(argv=None, prog=None):
    args = parse_args(argv, prog)
    if args.torch and not args.lm and not torch_available():
        print("--torch: torch and timm do not both import here; timing MindSpore only", file=sys.stderr)
    print(f"threads={args.runtime_num_threads}, {os.cpu_count()} CPU(s), {args.repeats} interleaved rounds, "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    result = lm.run(args, args.torch and not args.quick) if args.lm else run(args)
    print(f"load average at end {result['meta']['load_average_end'][0]:.2f}")
    print(lm.table(result) if args.lm else table(result))
    if args.json:
        write_json(result, args.json)
    if args.csv:
        (lm.write_csv if args.lm else write_csv)(result, args.csv)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
