"""Inference latency of the LayerNorm baseline, PRepBN (training and deploy form) and SLAB on this machine.

    python -m slab_ms.benchmark [--families deit swin] [--batch_sizes 1 8] [--repeats 5] [--threads N]

For each family (DeiT-T, Swin-T) four networks with random weights, in eval mode, GRAPH_MODE:
LayerNorm + softmax attention (the baseline), PRepBN in training form (eval: RepBN with its
statistics), PRepBN in deploy form (``reparameterize_model``: norms folded away) and SLAB (PRepBN +
SLA) in deploy form. After one warm-up call each, the networks are timed in one interleaved loop
(every round runs every network at every batch size once), so a change in machine load hits all
of them alike; the table reports medians and speed-ups over the baseline. The paper reports DeiT-T
at 3432 → 4194 img/s (×1.22) with PRepBN on a V100 (Table A2).
"""
import argparse
import os
import time

import numpy as np
import mindspore as ms

from . import create_model, list_models, reparameterize_model

__all__ = ["FAMILIES", "main"]

# family -> (display name, [(variant label, model name, factory kwargs, deploy form?)])
FAMILIES = {
    "deit": ("DeiT-T", [
        ("LayerNorm + softmax", "deit_tiny_prepbn", {"norm": "ln"}, False),
        ("PRepBN, training form", "deit_tiny_prepbn", {}, False),
        ("PRepBN, deploy form", "deit_tiny_prepbn", {}, True),
        ("SLAB, deploy form", "slab_deit_tiny", {}, True),
    ]),
    "swin": ("Swin-T", [
        ("LayerNorm + softmax", "swin_tiny_prepbn", {"norm": "ln"}, False),
        ("PRepBN, training form", "swin_tiny_prepbn", {}, False),
        ("PRepBN, deploy form", "swin_tiny_prepbn", {}, True),
        ("SLAB, deploy form", "slab_swin_tiny", {}, True),
    ]),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (the median is reported)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2 * (os.cpu_count() or 1),
                        help="MindSpore runtime_num_threads (default: 2 per CPU core, the best of 2/3/4/6/8 "
                             "measured on a 2-core machine)")
    return parser.parse_args(argv)


def build(model_name, kwargs, deploy):
    net = create_model(model_name, num_classes=1000, **kwargs).set_train(False)
    return reparameterize_model(net) if deploy else net


def main(argv=None):
    args = parse_args(argv)
    ms.set_context(mode=ms.GRAPH_MODE, runtime_num_threads=args.threads)
    rows, missing = [], []
    for family in args.families:
        label, variants = FAMILIES[family]
        if not all(name in list_models() for _, name, _, _ in variants):
            missing.append(label)
            continue
        rows += [(label, variant, build(name, kwargs, deploy)) for variant, name, kwargs, deploy in variants]
    inputs = {b: ms.Tensor(np.random.default_rng(0).standard_normal((b, 3, args.image_size, args.image_size),
                                                                    dtype=np.float32)) for b in args.batch_sizes}
    print(f"runtime_num_threads={args.threads}, {os.cpu_count()} CPU(s), image {args.image_size}, "
          f"{args.repeats} interleaved rounds, load average at start {os.getloadavg()[0]:.2f}", flush=True)
    for _, _, net in rows:  # compile and warm up
        for x in inputs.values():
            net(x).asnumpy()
    times = {(i, b): [] for i in range(len(rows)) for b in args.batch_sizes}
    for _ in range(args.repeats):
        for i, (_, _, net) in enumerate(rows):
            for b, x in inputs.items():
                start = time.perf_counter()
                net(x).asnumpy()
                times[(i, b)].append(time.perf_counter() - start)
    median = {key: float(np.median(v)) * 1e3 for key, v in times.items()}
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print(table(rows, median, args.batch_sizes))
    for label in missing:
        print(f"{label}: skipped, its models are not registered")


def table(rows, median, batch_sizes):
    head = f"{'model':8} {'variant':24}" + "".join(
        f" {f'b={b} ms':>9} {f'b={b} img/s':>11} {f'b={b} speed-up':>14}" for b in batch_sizes)
    lines = [head, "-" * len(head)]
    baseline = {}
    for i, (family, variant, _) in enumerate(rows):
        if family not in baseline:
            baseline[family] = i
        cells = []
        for b in batch_sizes:
            ms_ = median[(i, b)]
            cells.append(f" {ms_:9.1f} {b * 1e3 / ms_:11.1f} {median[(baseline[family], b)] / ms_:13.2f}x")
        lines.append(f"{family:8} {variant:24}" + "".join(cells))
    lines.append("speed-up: baseline latency / this latency (baseline = LayerNorm + softmax of the same family)")
    for family in baseline:
        index = {variant: i for i, (fam, variant, _) in enumerate(rows) if fam == family}
        gains = ", ".join(f"{median[(index['PRepBN, training form'], b)] / median[(index['PRepBN, deploy form'], b)]:.2f}x"
                          f" at b={b}" for b in batch_sizes)
        lines.append(f"{family}: folding the norms (PRepBN training form -> deploy form): {gains}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
