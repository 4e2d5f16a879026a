"""Inference latency, throughput, FLOP rate and peak memory of the SLAB families and their baselines.

    python -m slab_ms.benchmark [--families deit swin pvt cswin] [--forms ...] [--batch_sizes 1 8]
        [--repeats 7] [--warmup 3] [--runtime_num_threads N] [--train] [--profile]
        [--torch [--official_code DIR] [--torch_python PYTHON] [--torch_threads N|best]]
        [--json F] [--csv F] [--plot F.png]

Forms per family (random weights, eval mode, GRAPH_MODE): ``ln`` LayerNorm + softmax attention (the
baseline), ``prepbn`` PRepBN in training form (eval: RepBN with its statistics), ``prepbn_deploy``
(``reparameterize_model``: every norm folded away), ``slab`` (PRepBN + SLA, training form) and
``slab_deploy``. CSwin has no PRepBN-only release; its baseline and PRepBN forms are
``slab_cswin_tiny`` with softmax stripes (the CSWin-T layout).

Method. Every model runs in its own child process (which also gives its peak memory: the child's
own maximum resident set, VmHWM, including MindSpore's runtime, so compare models, not absolute numbers with
other tools). Per family and batch size the baseline, two other forms and a GEMM reference (a
chain of 24 (1568×192)·(192×768) products in one graph, run as the models' dense layers) are alive together and,
after ``--warmup`` untimed rounds, timed in interleaved rounds (each round runs each of them once), so a change in
machine load hits all of them alike;
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
(``ln``, ``prepbn``, ``slab``); ``--profile`` prints MindSpore's per-op-type profile of each model at the
largest batch size. Exit status 0 after a run; bad arguments: one message, exit status 2.

``--torch`` times each form's PyTorch counterpart in the same interleaved rounds (``torch_forms``): timm's
``deit_tiny_patch16_224`` / ``swin_tiny_patch4_window7_224`` for the baseline (PVT-T and CSwin-T have no LayerNorm
model in timm), and with ``--official_code DIR`` (a checkout of the official SLAB code) the official models for the
PRepBN and SLAB forms, the deploy forms with their RepBN folded by the benchmark (the official code ships no fold)
and checked against the unfolded logits. Each framework runs at its own default thread count (ours:
``--runtime_num_threads``; PyTorch: its own, or ``--torch_threads N`` / ``best``, the fastest of 1..2×CPUs per form
and batch size); every row says the count it used. ``--torch_python`` runs the PyTorch children with another
interpreter (an environment that holds torch, not MindSpore). Rows and files give ours ÷ PyTorch per form and batch
size: the paired time ratio of the same rounds, and for ``--train`` the ratio of the median step times. Without
torch, timm or the official code, one line says what is missing and the MindSpore rows still run.
"""
import argparse
import os
import shutil
import sys
import time

from . import lm
from .children import Child, stop_all
from .families import FAMILIES, FORMS, GEMM, TRAINING_FORMS, torch_counterpart
from .report import plot, table, write_csv, write_json
from .stats import summarise

__all__ = ["FAMILIES", "FORMS", "main"]
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds slab_ms/
TORCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_forms.py")


def mindspore_environment():
    """The environment of a MindSpore child: this package first on its path."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p))


def mindspore_child(member, args, flops):
    """A child process timing ``member`` (a (family, form) pair or the GEMM reference) with MindSpore."""
    spec = {"member": member, "threads": args.runtime_num_threads, "jit_level": args.jit_level,
            "quick": args.quick, "flops": flops}
    return Child([sys.executable, "-m", "slab_ms.benchmark.ms_forms"], spec, mindspore_environment())


def torch_environment():
    """The environment of a PyTorch child: Python's view of ours. Loading MindSpore's libraries sets variables in
    the C environment only (OMP_NUM_THREADS=1 among them), which a child would otherwise inherit and which would
    hold PyTorch to one thread."""
    return dict(os.environ)


def torch_child(args, spec):
    """A child process timing a PyTorch counterpart (``families.torch_counterpart``) under ``--torch_python``."""
    return Child([args.torch_python, TORCH_SCRIPT], dict(spec, threads=args.torch_threads), torch_environment())


def torch_counterparts(args):
    """{(family, form): counterpart spec} of the counterparts this run can time; prints one line for what is
    missing. Returns (counterparts, what the PyTorch interpreter reported)."""
    if not args.torch:
        return {}, None
    try:
        probe = Child([args.torch_python, TORCH_SCRIPT], {"probe": True, "official_code": args.official_code},
                      torch_environment())
        found = probe.ready
        probe.stop()
    except (OSError, RuntimeError) as err:
        print(f"--torch: {args.torch_python} cannot run the PyTorch side ({err}); timing MindSpore only",
              file=sys.stderr)
        return {}, None
    for name in ("torch", "timm"):  # the official code builds on timm too
        if not found[name]:
            print(f"--torch: {name} does not import in {args.torch_python} ({found[name + '_error']}); "
                  "timing MindSpore only", file=sys.stderr)
            return {}, found
    official = args.official_code if found.get("official") else None
    if not args.official_code:
        print("--torch: no --official_code: the PRepBN and SLAB forms run without a PyTorch counterpart",
              file=sys.stderr)
    elif not official:
        print(f"--torch: the official code in {args.official_code} does not import in {args.torch_python} "
              f"({found['official_error']}); the PRepBN and SLAB forms run without a PyTorch counterpart",
              file=sys.stderr)
    counterparts = {(family, form): torch_counterpart(family, form, official)
                    for family in args.families for form in args.forms}
    return {key: spec for key, spec in counterparts.items() if spec}, found


def thread_count(text):
    """--torch_threads: a positive count or "best"."""
    if text == "best":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive count or 'best', got '{text}'")
    return int(text)


def official_classification_folder(path):
    """The folder of the official code that holds ``models/`` (``DIR/classification`` or ``DIR`` itself), or None."""
    for folder in (os.path.join(path, "classification"), path):
        if os.path.isfile(os.path.join(folder, "models", "prepbn.py")):
            return os.path.abspath(folder)
    return None


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
                             "on a 2-core machine; --threads: the same)")
    parser.add_argument("--jit_level", choices=("O0", "O1", "O2"), default=None,
                        help="MindSpore jit_level (default: MindSpore's own)")
    parser.add_argument("--train", action="store_true", help="also time one training step of the training forms")
    parser.add_argument("--torch", action="store_true",
                        help="also time each form's PyTorch counterpart (timm for the baseline; the official code "
                             "for the PRepBN / SLAB forms with --official_code)")
    parser.add_argument("--official_code", metavar="DIR",
                        help="a checkout of the official SLAB code (github xinghaochen/SLAB, or its classification/)")
    parser.add_argument("--torch_python", metavar="PYTHON", default=sys.executable,
                        help="the interpreter that runs the PyTorch children (default: this one)")
    parser.add_argument("--torch_threads", type=thread_count, default=None, metavar="N|best",
                        help="PyTorch's threads (default: PyTorch's own; best: the fastest of 1..2 per CPU, per "
                             "form and batch size)")
    parser.add_argument("--profile", action="store_true",
                        help="print MindSpore's per-op-type profile of each model at the largest batch size")
    parser.add_argument("--quick", action="store_true", help="narrow, shallow models: a smoke test, not numbers")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--csv", metavar="FILE", help="write one row per model and batch size as CSV")
    parser.add_argument("--plot", metavar="FILE.png", help="latency bars per family with the baseline line")
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
    for name in ("official_code", "torch_threads"):
        if getattr(args, name) is not None and not args.torch:
            parser.error(f"--{name} needs --torch")
    if args.quick and args.torch:
        parser.error("--quick times narrow models that have no PyTorch counterpart: drop --quick or --torch")
    if args.official_code is not None:
        folder = official_classification_folder(args.official_code)
        if folder is None:
            parser.error(f"--official_code {args.official_code}: not a checkout of the official SLAB code (no "
                         "classification/models/prepbn.py in it)")
        args.official_code = folder
    if args.torch_python != sys.executable:
        found = shutil.which(args.torch_python)
        if not found:
            parser.error(f"--torch_python {args.torch_python}: no such executable")
        args.torch_python = found
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


def _members(family, index, group, counterparts):
    """The members timed together in group ``index``: the baseline, the group's forms, the GEMM reference and the
    PyTorch counterparts (family, form, "torch") of these forms (the baseline's in the first group only)."""
    forms = ["ln"] + group
    torch_forms = [form for form in (forms if index == 0 else group) if (family, form) in counterparts]
    return [(family, form) for form in forms] + [GEMM] + [(family, form, "torch") for form in torch_forms]


def run(args):
    """Measure everything; returns the JSON-ready result dict."""
    counterparts, torch_found = torch_counterparts(args)
    groups = {family: _groups(args.forms) for family in args.families}
    rounds = len(args.batch_sizes) * args.repeats * (2 if args.train else 1)
    progress = Progress(sum(len(g) for g in groups.values()) * rounds)
    samples, train_samples, peaks, flops, profiles, torch_ready, threads = {}, {}, {}, {}, {}, {}, {}
    load_start = os.getloadavg()
    for family in args.families:
        for index, group in enumerate(groups[family]):
            children = {}
            try:
                for member in _members(family, index, group, counterparts):
                    name = GEMM if member == GEMM else "/".join(member[1:])
                    progress_text = f"{FAMILIES[family][0]}: starting {name}"
                    print(f"\r{progress_text[:110]:110}", end="", file=sys.stderr, flush=True)
                    if member[-1] == "torch":
                        children[member] = torch_child(args, counterparts[member[:2]])
                        torch_ready[member] = children[member].ready
                    else:
                        children[member] = mindspore_child(member, args, flops.get(member))
                        flops[member] = children[member].ready
                for b in args.batch_sizes:
                    for member, child in children.items():
                        threads[(member, b)] = (child.ask("threads", b) if member[-1] == "torch"
                                                else args.runtime_num_threads)
                    for _ in range(args.warmup):  # compile, then fill memory pools and caches
                        for child in children.values():
                            child.ask("time", b)
                    for r in range(args.repeats):
                        for member, child in children.items():
                            samples.setdefault((index, member, b), []).append(child.ask("time", b))
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
                        if member != GEMM and member[-1] != "torch" and member not in profiles:
                            profiles[member] = child.ask("profile", args.batch_sizes[-1])
            finally:
                stop_all(children.values())
    progress.close()
    measured = {"samples": samples, "train_samples": train_samples, "peaks": peaks, "flops": flops,
                "profiles": profiles, "threads": threads, "counterparts": counterparts, "torch_ready": torch_ready,
                "torch_found": torch_found}
    return summarise(args, measured, load_start, os.getloadavg())


def main(argv=None, prog=None):
    args = parse_args(argv, prog)
    torch_threads = {None: "PyTorch's own", "best": "the fastest per form"}.get(args.torch_threads,
                                                                                 args.torch_threads)
    print(f"MindSpore threads={args.runtime_num_threads}"
          + (f", PyTorch threads: {torch_threads}" if args.torch else "")
          + f", {os.cpu_count()} CPU(s), {args.repeats} interleaved rounds, "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    try:
        result = lm.run(args, args.torch and not args.quick, torch_environment()) if args.lm else run(args)
    except RuntimeError as err:  # a child's error, as the child reported it
        print(f"\nbenchmark: {err}", file=sys.stderr)
        return 1
    print(f"load average at end {result['meta']['load_average_end'][0]:.2f}")
    print(lm.table(result) if args.lm else table(result))
    if args.json:
        write_json(result, args.json)
    if args.csv:
        (lm.write_csv if args.lm else write_csv)(result, args.csv)
    if args.plot:
        plot(result, args.plot)
    return 0
