"""From the timed samples to the result rows: medians, spreads, ratios against the baseline of the same group."""
import os
import platform

import numpy as np
import mindspore as ms

from .families import FAMILIES, FORM_LABELS, GEMM, GEMM_DEPTH, GEMM_SHAPE, counterpart_label, gemm_flops


def sample_stats(values):
    """Median, min, max and the samples, in ms, of timings in seconds."""
    ms_ = np.asarray(values) * 1e3
    return {"median_ms": float(np.median(ms_)), "min_ms": float(ms_.min()), "max_ms": float(ms_.max()),
            "samples_ms": [round(float(v), 3) for v in ms_]}


def _quartiles(ratios):
    """(median, 25th, 75th percentile) of per-round ratios."""
    q1, median, q3 = (float(v) for v in np.percentile(ratios, [25, 50, 75]))
    return median, q1, q3


def _row(args, measured, member, b):
    """The result row of ``member`` (a (family, form) pair, or (family, form, "torch") for its PyTorch counterpart)
    at batch size ``b``, or None when it was not timed."""
    samples = measured["samples"]
    family, form = member[:2]
    keys = [k for k in samples if k[1] == member and k[2] == b]
    if not keys:
        return None
    index = keys[0][0]
    baseline = samples[(index, (family, "ln"), b)]
    stats = sample_stats(sum((samples[k] for k in keys), []))
    # each member against the baseline of its own group; the baseline's row pools all its groups
    base = stats["median_ms"] if member == (family, "ln") else float(np.median(baseline)) * 1e3
    # the same ratio per round (each round times every member once, back to back), whose spread shows how far
    # the host's slow phases move it
    ratio, q1, q3 = _quartiles(np.asarray(samples[(index, member, b)]) / np.asarray(baseline))
    gemm_rate = gemm_flops() / (float(np.median(samples[(index, GEMM, b)])) * 1e3) * 1e-6
    row = {"family": family, "family_name": FAMILIES[family][0], "form": form, "batch_size": b, **stats,
           "images_per_s": b * 1e3 / stats["median_ms"], "baseline_median_ms": base,
           "speedup_vs_baseline": base / stats["median_ms"], "time_ratio_paired": ratio, "time_ratio_q1": q1,
           "time_ratio_q3": q3, "gemm_gflop_per_s": gemm_rate, "peak_rss_mb": measured["peaks"].get((member, b)),
           "threads": measured["threads"].get((member, b))}
    if member[-1] == "torch":
        spec = measured["counterparts"][(family, form)]
        row.update(framework="pytorch", form_label=f"PyTorch, {FORM_LABELS[form]}", model=counterpart_label(spec),
                   model_kwargs=spec["kwargs"], deploy=spec["deploy"], **measured["torch_ready"].get(member, {}))
    else:
        name, kwargs, deploy = FAMILIES[family][2][form]
        row.update(framework="mindspore", form_label=FORM_LABELS[form], model=name, model_kwargs=kwargs,
                   deploy=deploy)
    counted = measured["flops"].get((family, form))  # a counterpart has the architecture of our form
    if counted:
        rate = counted * b / stats["median_ms"] * 1e-6
        row.update(gflop_per_image=counted * 1e-9, gflop_per_s=rate, gemm_fraction=rate / gemm_rate)
    if (member, b) in measured["train_samples"]:
        train = sample_stats(measured["train_samples"][(member, b)])
        row.update(train_step_ms=train["median_ms"], train_step_min_ms=train["min_ms"],
                   train_step_max_ms=train["max_ms"], train_images_per_s=b * 1e3 / train["median_ms"])
    if member in measured["profiles"] and b == args.batch_sizes[-1]:
        row["profile_ms_by_op_type"] = dict(measured["profiles"][member])
    return row


def add_torch_ratios(ours, theirs, samples):
    """Ours ÷ PyTorch on both rows: the paired time ratio over the rounds of the group that timed the
    counterpart, and the ratio of the median training steps."""
    family, form, b = ours["family"], ours["form"], ours["batch_size"]
    index = next(k[0] for k in samples if k[1] == (family, form, "torch") and k[2] == b)
    paired = np.asarray(samples[(index, (family, form), b)]) / np.asarray(samples[(index, (family, form, "torch"), b)])
    ratio, q1, q3 = _quartiles(paired)
    ratios = {"torch_median_ms": theirs["median_ms"], "ratio_vs_torch": ratio, "ratio_vs_torch_q1": q1,
              "ratio_vs_torch_q3": q3}
    if "train_step_ms" in ours and "train_step_ms" in theirs:
        ratios.update(torch_train_step_ms=theirs["train_step_ms"],
                      train_ratio_vs_torch=ours["train_step_ms"] / theirs["train_step_ms"])
    ours.update(ratios)
    theirs.update(ratios)


def summarise(args, measured, load_start, load_end):
    """The JSON-ready result. ``measured``: samples[(group, member, batch size)] and train_samples[(member,
    batch size)] in seconds, peaks[(member, batch size)] in MB, threads[(member, batch size)], flops[member] per
    image, profiles[member], the PyTorch counterparts[(family, form)] with what their children reported
    (torch_ready[member]) and what the PyTorch interpreter has (torch_found)."""
    results = []
    for family in args.families:
        for form in args.forms:
            for b in args.batch_sizes:
                ours = _row(args, measured, (family, form), b)
                if ours is None:
                    continue
                results.append(ours)
                theirs = _row(args, measured, (family, form, "torch"), b)
                if theirs is not None:
                    add_torch_ratios(ours, theirs, measured["samples"])
                    results.append(theirs)
                elif args.torch:
                    ours["ratio_vs_torch"] = None  # no counterpart
    meta = {"threads": args.runtime_num_threads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "processor": platform.processor(), "mindspore": ms.__version__, "jit_level": args.jit_level,
            "repeats": args.repeats, "warmup": args.warmup, "batch_sizes": args.batch_sizes, "quick": args.quick,
            "load_average_start": list(load_start), "load_average_end": list(load_end),
            "gemm": {"shape": list(GEMM_SHAPE), "depth": GEMM_DEPTH, "gflop": gemm_flops() * 1e-9},
            "flops": "per image, by the reference formulas of Dense, Conv2d and attention products"}
    if args.torch:
        meta["torch"] = {"python": args.torch_python, "official_code": args.official_code,
                         "threads": args.torch_threads or "PyTorch's default", "found": measured["torch_found"]}
    return {"meta": meta, "results": results}
