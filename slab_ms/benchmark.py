"""Inference latency, throughput, FLOP rate and peak memory of the SLAB families and their baselines.

    python -m slab_ms.benchmark [--families deit swin pvt cswin] [--forms ...] [--batch_sizes 1 8]
        [--repeats 7] [--warmup 3] [--threads N] [--train] [--torch] [--profile] [--json F] [--csv F] [--plot F.png]

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

``--train`` adds one optimizer step (SGD, cross-entropy, random labels) of the training forms
(``ln``, ``prepbn``, ``slab``); ``--torch`` adds timm's ``deit_tiny_patch16_224`` /
``swin_tiny_patch4_window7_224`` (when torch and timm import) with the same thread count, timed in
the baseline's group; ``--profile`` prints MindSpore's per-op-type profile of each model at the
largest batch size. Exit status 0 after a run; bad arguments: one message, exit status 2.
"""
import argparse
import csv
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from . import cli, create_model, reparameterize_model
from .layers.flops import count_flops

__all__ = ["FAMILIES", "FORMS", "main"]

FORMS = ("ln", "prepbn", "prepbn_deploy", "slab", "slab_deploy")
FORM_LABELS = {"ln": "LayerNorm + softmax", "prepbn": "PRepBN, training form", "prepbn_deploy": "PRepBN, deploy form",
               "slab": "SLAB, training form", "slab_deploy": "SLAB, deploy form", "torch": "PyTorch (timm), LN"}
# family -> (display name, timm baseline, {form: (model name, factory kwargs, deploy?)})
FAMILIES = {
    "deit": ("DeiT-T", "deit_tiny_patch16_224", {
        "ln": ("deit_tiny_prepbn", {"norm": "ln"}, False),
        "prepbn": ("deit_tiny_prepbn", {}, False),
        "prepbn_deploy": ("deit_tiny_prepbn", {}, True),
        "slab": ("slab_deit_tiny", {}, False),
        "slab_deploy": ("slab_deit_tiny", {}, True)}),
    "swin": ("Swin-T", "swin_tiny_patch4_window7_224", {
        "ln": ("swin_tiny_prepbn", {"norm": "ln"}, False),
        "prepbn": ("swin_tiny_prepbn", {}, False),
        "prepbn_deploy": ("swin_tiny_prepbn", {}, True),
        "slab": ("slab_swin_tiny", {}, False),
        "slab_deploy": ("slab_swin_tiny", {}, True)}),
    "pvt": ("PVT-T", None, {
        "ln": ("pvt_tiny_prepbn", {"norm": "ln"}, False),
        "prepbn": ("pvt_tiny_prepbn", {}, False),
        "prepbn_deploy": ("pvt_tiny_prepbn", {}, True),
        "slab": ("slab_pvt_tiny", {}, False),
        "slab_deploy": ("slab_pvt_tiny", {}, True)}),
    "cswin": ("CSwin-T", None, {
        "ln": ("slab_cswin_tiny", {"norm": "ln", "attn": "softmax"}, False),
        "prepbn": ("slab_cswin_tiny", {"attn": "softmax"}, False),
        "prepbn_deploy": ("slab_cswin_tiny", {"attn": "softmax"}, True),
        "slab": ("slab_cswin_tiny", {}, False),
        "slab_deploy": ("slab_cswin_tiny", {}, True)}),
}
# --quick: the same code paths on narrow, shallow models (for tests and smoke runs, not for numbers).
QUICK = {
    "deit": ({"embed_dim": 32, "depth": 2, "num_heads": 2}, 64),
    "swin": ({"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)}, 224),
    "pvt": ({"embed_dims": (16, 16, 32, 32), "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)}, 64),
    "cswin": ({"embed_dim": 16, "depth": (1, 1, 1, 1), "num_heads": (2, 2, 2, 2)}, 224),
}
GEMM_SHAPE, GEMM_DEPTH = (1568, 192, 768), 24
GEMM = "gemm"


# ------------------------------------------------------------------------------- child processes
class GemmChain(nn.Cell):
    """The GEMM reference: ``GEMM_DEPTH`` chained (1568×192)·(192×768) and (1568×768)·(768×192) matmuls."""

    def __init__(self):
        super().__init__()
        _, k, n = GEMM_SHAPE
        rng = np.random.default_rng(0)
        self.up = ms.Tensor(rng.standard_normal((k, n), dtype=np.float32) / np.sqrt(k))
        self.down = ms.Tensor(rng.standard_normal((n, k), dtype=np.float32) / np.sqrt(n))

    def construct(self, x):
        for i in range(GEMM_DEPTH):
            x = ops.matmul(x, self.up) if i % 2 == 0 else ops.matmul(x, self.down)
        return x


def gemm_flops():
    m, k, n = GEMM_SHAPE
    return 2.0 * m * k * n * GEMM_DEPTH


def peak_rss_mb():
    """This process's peak resident memory in MB: Linux's VmHWM, which starts afresh in a spawned child (its
    ``ru_maxrss`` starts at the parent's peak, since it survives exec), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(spec, quick, with_flops):
    """The network of a (family, form) spec, or the GEMM chain; returns (net, image size, FLOPs per image or None)."""
    if spec == GEMM:
        return GemmChain(), None, gemm_flops()
    family, form = spec
    name, kwargs, deploy = FAMILIES[family][2][form]
    kwargs = dict(kwargs)
    image_size = 224
    if quick:
        extra, image_size = QUICK[family]
        kwargs.update(extra, image_size=image_size)
    ms.set_seed(0)
    net = create_model(name, num_classes=1000, **kwargs).set_train(False)
    if deploy:
        net = reparameterize_model(net)
    return net, image_size, count_flops(net, image_size) if with_flops else None


def _train_step(net):
    """One SGD step of ``net`` on (images, labels), compiled once."""
    loss_fn = nn.CrossEntropyLoss()
    optimizer = nn.SGD(net.trainable_params(), learning_rate=1e-4, momentum=0.9)

    def forward(x, y):
        return loss_fn(net(x), y)

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters)

    @ms.jit
    def step(x, y):
        loss, grads = grad_fn(x, y)
        optimizer(grads)
        return loss

    return step


def _worker(conn, spec, threads, jit_level, quick, flops):
    """Child: build ``spec``, then answer ("time" | "train" | "profile" | "peak", b) and ("stop",) requests.

    ``flops`` (per image) is counted here when None.
    """
    try:
        ms.set_context(mode=ms.GRAPH_MODE)
        if jit_level:
            ms.set_context(jit_config={"jit_level": jit_level})
        cli.set_cpu_threads(threads)
        net, image_size, counted = _build(spec, quick, flops is None)
        conn.send(("ready", counted if flops is None else flops))
        inputs, train = {}, {}
        while True:
            request = conn.recv()
            if request[0] == "stop":
                conn.send(("peak_mb", peak_rss_mb()))
                return
            kind, b = request
            if kind == "peak":
                conn.send(("peak_mb", peak_rss_mb()))
                continue
            if b not in inputs:
                shape = GEMM_SHAPE[:2] if spec == GEMM else (b, 3, image_size, image_size)
                inputs[b] = ms.Tensor(np.random.default_rng(b).standard_normal(shape, dtype=np.float32))
            x = inputs[b]
            if kind == "time":
                net.set_train(False)
                start = time.perf_counter()
                net(x).asnumpy()
                conn.send(("seconds", time.perf_counter() - start))
            elif kind == "train":
                net.set_train(True)
                if b not in train:
                    train[b] = (_train_step(net), ms.Tensor(np.arange(b) % 1000, ms.int32))
                step, labels = train[b]
                start = time.perf_counter()
                step(x, labels).asnumpy()
                conn.send(("seconds", time.perf_counter() - start))
            elif kind == "profile":
                conn.send(("profile", _profile(net, x)))
    except Exception as err:  # report to the parent instead of dying silently
        conn.send(("error", f"{type(err).__name__}: {err}"))


def _torch_worker(conn, model_name, threads):
    """Child: timm's ``model_name`` with ``threads`` torch threads; answers like ``_worker``."""
    try:
        import timm
        import torch
        torch.set_num_threads(threads)
        net = timm.create_model(model_name, pretrained=False).eval()
        conn.send(("ready", None))
        inputs = {}
        while True:
            request = conn.recv()
            if request[0] == "stop":
                conn.send(("peak_mb", peak_rss_mb()))
                return
            kind, b = request
            if kind == "peak":
                conn.send(("peak_mb", peak_rss_mb()))
                continue
            if b not in inputs:
                inputs[b] = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(b))
            x = inputs[b]
            with torch.inference_mode():
                start = time.perf_counter()
                net(x)
                conn.send(("seconds", time.perf_counter() - start))
    except Exception as err:
        conn.send(("error", f"{type(err).__name__}: {err}"))


def _profile(net, x, top=12):
    """Per-op-type time (ms per call) of ``net(x)`` from MindSpore's profiler, largest first."""
    import glob
    net(x).asnumpy()
    folder = tempfile.mkdtemp(prefix="slab_profile_")
    try:
        profiler = ms.Profiler(output_path=folder)
        calls = 3
        for _ in range(calls):
            net(x).asnumpy()
        profiler.stop()
        profiler.analyse()
        by_type = {}
        for path in glob.glob(os.path.join(folder, "**", "cpu_op_type_info_*.csv"), recursive=True):
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    by_type[row["op_type"]] = by_type.get(row["op_type"], 0.0) + float(row["total_compute_time"]) / calls
        return sorted(by_type.items(), key=lambda kv: -kv[1])[:top]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Child:
    """One model in its own process."""

    def __init__(self, target, *args):
        ctx = mp.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child_conn,) + args, daemon=True)
        self.process.start()
        self.flops = self._answer("ready")

    def _answer(self, expected):
        kind, value = self.conn.recv()
        if kind == "error":
            raise RuntimeError(value)
        if kind != expected:
            raise RuntimeError(f"benchmark child answered {kind!r}, expected {expected!r}")
        return value

    def ask(self, kind, batch_size=None):
        self.conn.send((kind, batch_size))
        return self._answer({"profile": "profile", "peak": "peak_mb"}.get(kind, "seconds"))

    def stop(self):
        """Ends the child; returns its peak resident memory in MB."""
        self.conn.send(("stop",))
        peak = self._answer("peak_mb")
        self.process.join(timeout=60)
        return peak


# ------------------------------------------------------------------------------------- the driver
def torch_available():
    """Whether torch and timm import (timm may fail at import with a mismatched torchvision)."""
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001  (any import failure means: no PyTorch comparison)
        return False
    return True


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS),
                        help="forms to time (the ln baseline is always included)")
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7, help="timed interleaved rounds (median, min, max reported)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed interleaved rounds first (the first compiles; the next ones still ran 10-30 %% "
                             "slower on a 2-core machine as memory pools and caches fill)")
    parser.add_argument("--threads", type=int, default=2 * (os.cpu_count() or 1),
                        help="MindSpore CPU op threads (default: 2 per CPU core, the best of 2/3/4/6/8 measured "
                             "on a 2-core machine); also torch's threads for --torch")
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
    args = parser.parse_args(argv)
    for name in ("repeats", "warmup", "threads"):
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
                        children[member] = Child(_torch_worker, FAMILIES[family][1], args.threads)
                    else:
                        children[member] = Child(_worker, member, args.threads, args.jit_level, args.quick,
                                                 flops.get(member))
                        flops[member] = children[member].flops
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
                    trainable = {m: c for m, c in children.items() if m != GEMM and m[1] in ("ln", "prepbn", "slab")}
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
                        child.process.kill()
    progress.close()
    return summarise(args, samples, train_samples, peaks, flops, profiles, load_start, os.getloadavg(),
                     use_torch)


def _stats(values):
    ms_ = np.asarray(values) * 1e3
    return {"median_ms": float(np.median(ms_)), "min_ms": float(ms_.min()), "max_ms": float(ms_.max()),
            "samples_ms": [round(float(v), 3) for v in ms_]}


def summarise(args, samples, train_samples, peaks, flops, profiles, load_start, load_end, use_torch):
    results = []
    for family in args.families:
        forms = args.forms + (["torch"] if use_torch and FAMILIES[family][1] else [])
        for form in forms:
            member = (family, form)
            for b in args.batch_sizes:
                keys = [k for k in samples if k[1] == member and k[2] == b]
                if not keys:
                    continue
                index = keys[0][0]
                stats = _stats(sum((samples[k] for k in keys), []))
                # each form against the baseline of its own group; the baseline's row pools all its groups
                base = (stats["median_ms"] if form == "ln" else
                        float(np.median(samples[(index, (family, "ln"), b)])) * 1e3)
                # the same ratio per round (each round times every member once, back to back), whose spread
                # shows how far the host's slow phases move it
                paired = np.asarray(samples[(index, member, b)]) / np.asarray(samples[(index, (family, "ln"), b)])
                q1, ratio, q3 = (float(v) for v in np.percentile(paired, [25, 50, 75]))
                gemm = float(np.median(samples[(index, GEMM, b)])) * 1e3
                gemm_rate = gemm_flops() / gemm * 1e-6
                name, kwargs, deploy = FAMILIES[family][2].get(form, (FAMILIES[family][1], {}, False))
                row = {"family": family, "family_name": FAMILIES[family][0], "form": form,
                       "form_label": FORM_LABELS[form], "model": name, "model_kwargs": kwargs, "deploy": deploy,
                       "batch_size": b, **stats, "images_per_s": b * 1e3 / stats["median_ms"],
                       "baseline_median_ms": base, "speedup_vs_baseline": base / stats["median_ms"],
                       "time_ratio_paired": ratio, "time_ratio_q1": q1, "time_ratio_q3": q3,
                       "gemm_gflop_per_s": gemm_rate, "peak_rss_mb": peaks.get((member, b))}
                counted = flops.get(member) or (flops.get((family, "ln")) if form == "torch" else None)
                if counted:  # timm's model is the LayerNorm + softmax baseline's architecture
                    rate = counted * b / stats["median_ms"] * 1e-6
                    row.update(gflop_per_image=counted * 1e-9, gflop_per_s=rate, gemm_fraction=rate / gemm_rate)
                if (member, b) in train_samples:
                    train = _stats(train_samples[(member, b)])
                    row.update(train_step_ms=train["median_ms"], train_step_min_ms=train["min_ms"],
                               train_step_max_ms=train["max_ms"], train_images_per_s=b * 1e3 / train["median_ms"])
                if member in profiles and b == args.batch_sizes[-1]:
                    row["profile_ms_by_op_type"] = dict(profiles[member])
                results.append(row)
    return {"meta": {"threads": args.threads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
                     "processor": platform.processor(), "mindspore": ms.__version__, "jit_level": args.jit_level,
                     "repeats": args.repeats, "warmup": args.warmup, "batch_sizes": args.batch_sizes,
                     "quick": args.quick,
                     "load_average_start": list(load_start), "load_average_end": list(load_end),
                     "gemm": {"shape": list(GEMM_SHAPE), "depth": GEMM_DEPTH, "gflop": gemm_flops() * 1e-9},
                     "flops": "per image, by the reference formulas of Dense, Conv2d and attention products"},
            "results": results}


def table(result):
    batch_sizes = result["meta"]["batch_sizes"]
    head = f"{'model':8} {'form':22}" + "".join(
        f" | b={b}: {'ms (min-max)':>21} {'img/s':>7} {'xLN':>5} {'GFLOP/s':>7} {'%GEMM':>5} {'MB':>5}"
        for b in batch_sizes)
    lines = [head, "-" * len(head)]
    rows = {}
    for row in result["results"]:
        rows.setdefault((row["family_name"], row["form_label"]), {})[row["batch_size"]] = row
    for (family, label), by_b in rows.items():
        cells = []
        for b in batch_sizes:
            r = by_b.get(b)
            if r is None:
                cells.append(" | " + " " * 61)
                continue
            spread = f"{r['median_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f})"
            rate = f"{r['gflop_per_s']:7.1f} {100 * r['gemm_fraction']:4.0f}%" if "gflop_per_s" in r else " " * 13
            peak = f"{r['peak_rss_mb']:5.0f}" if r.get("peak_rss_mb") else "     "
            cells.append(f" | b={b}: {spread:>21} {r['images_per_s']:7.1f} {r['speedup_vs_baseline']:4.2f}x {rate} {peak}")
        lines.append(f"{family:8} {label:22}" + "".join(cells))
    gemm = {r["batch_size"]: r["gemm_gflop_per_s"] for r in result["results"]}
    lines.append("xLN: baseline (LayerNorm + softmax) median / this median, both from the same interleaved group; "
                 "MB: the model process's peak RSS")
    lines.append("GEMM reference (same groups, median over groups): " + ", ".join(
        f"{np.median([r['gemm_gflop_per_s'] for r in result['results'] if r['batch_size'] == b]):.0f} GFLOP/s "
        f"(b={b} groups)" for b in sorted(gemm)))
    lines.append("paired time ratio: this ms / the baseline's ms of the same round, median [25-75 %] over the "
                 "rounds (lower is faster):")
    for (family, label), by_b in rows.items():
        if label not in (FORM_LABELS["ln"], FORM_LABELS["torch"]):
            lines.append(f"  {family:8} {label:22}" + "".join(
                f"  b={b}: {r['time_ratio_paired']:.2f} [{r['time_ratio_q1']:.2f}-{r['time_ratio_q3']:.2f}]"
                for b, r in sorted(by_b.items())))
    trains = [r for r in result["results"] if "train_step_ms" in r]
    for r in trains:
        lines.append(f"train step {r['family_name']:8} {r['form_label']:22} b={r['batch_size']}: "
                     f"{r['train_step_ms']:.1f} ms ({r['train_step_min_ms']:.1f}-{r['train_step_max_ms']:.1f}), "
                     f"{r['train_images_per_s']:.1f} img/s")
    for r in result["results"]:
        if r["form"] == "torch":
            ours = next(o for o in result["results"] if o["family"] == r["family"] and o["form"] == "ln"
                        and o["batch_size"] == r["batch_size"])
            fastest = min((o for o in result["results"] if o["family"] == r["family"] and o["form"] != "torch"
                           and o["batch_size"] == r["batch_size"]), key=lambda o: o["median_ms"])
            lines.append(f"{r['family_name']} b={r['batch_size']}: MindSpore LN baseline / PyTorch = "
                         f"{ours['median_ms'] / r['median_ms']:.2f}x; fastest MindSpore form "
                         f"({fastest['form_label']}) / PyTorch = {fastest['median_ms'] / r['median_ms']:.2f}x "
                         "(time ratios: lower is faster)")
    for r in result["results"]:
        if "profile_ms_by_op_type" in r:
            top = ", ".join(f"{op} {t:.1f}" for op, t in r["profile_ms_by_op_type"].items())
            lines.append(f"profile {r['family_name']} {r['form_label']} b={r['batch_size']} (ms per call): {top}")
    return "\n".join(lines)


def write_csv(result, path):
    fields = ["family", "form", "model", "batch_size", "median_ms", "min_ms", "max_ms", "images_per_s",
              "speedup_vs_baseline", "time_ratio_paired", "time_ratio_q1", "time_ratio_q3", "gflop_per_image",
              "gflop_per_s", "gemm_gflop_per_s", "gemm_fraction",
              "peak_rss_mb", "train_step_ms", "train_images_per_s"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["results"])


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .utils import save_figure
    families = list(dict.fromkeys(r["family"] for r in result["results"]))
    batch_sizes = result["meta"]["batch_sizes"]
    fig, axes = plt.subplots(len(batch_sizes), len(families), squeeze=False,
                             figsize=(3.2 * len(families), 3.0 * len(batch_sizes)))
    for i, b in enumerate(batch_sizes):
        for j, family in enumerate(families):
            ax = axes[i][j]
            rows = [r for r in result["results"] if r["family"] == family and r["batch_size"] == b]
            medians = [r["median_ms"] for r in rows]
            errors = [[m - r["min_ms"] for m, r in zip(medians, rows)], [r["max_ms"] - m for m, r in zip(medians, rows)]]
            ax.bar(range(len(rows)), medians, yerr=errors, color=["grey" if r["form"] == "ln" else "tab:blue"
                                                                  for r in rows], capsize=2)
            for x, r in enumerate(rows):  # the paired time ratio against the baseline, above the whisker
                if r["form"] != "ln":
                    ax.annotate(f"{r['time_ratio_paired']:.2f}", (x, r["max_ms"]), xytext=(0, 2),
                                textcoords="offset points", ha="center", va="bottom", fontsize=7,
                                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
            baseline = next((r["median_ms"] for r in rows if r["form"] == "ln"), None)
            if baseline:
                ax.axhline(baseline, color="black", linestyle="--", linewidth=0.8)
            ax.set_xticks(range(len(rows)), [r["form"] for r in rows], rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{rows[0]['family_name'] if rows else family}, batch {b}", fontsize=9)
            ax.set_ylabel("ms per batch (median, min-max)", fontsize=7)
            ax.margins(y=0.12)  # room for the ratios
    fig.suptitle("above each bar: its time / the LayerNorm baseline's (dashed) in the same round, median over the "
                 "rounds; lower is faster", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main(argv=None):
    args = parse_args(argv)
    if args.torch and not torch_available():
        print("--torch: torch and timm do not both import here; timing MindSpore only", file=sys.stderr)
    print(f"threads={args.threads}, {os.cpu_count()} CPU(s), {args.repeats} interleaved rounds, "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    result = run(args)
    print(f"load average at end {result['meta']['load_average_end'][0]:.2f}")
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.csv:
        write_csv(result, args.csv)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
