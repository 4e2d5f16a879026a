"""From the timed samples to the result rows: medians, spreads, ratios against the baseline of the same group."""
import os
import platform

import numpy as np
import mindspore as ms

from .families import FAMILIES, FORM_LABELS, GEMM, GEMM_DEPTH, GEMM_SHAPE, gemm_flops


def sample_stats(values):
    """Median, min, max and the samples, in ms, of timings in seconds."""
    ms_ = np.asarray(values) * 1e3
    return {"median_ms": float(np.median(ms_)), "min_ms": float(ms_.min()), "max_ms": float(ms_.max()),
            "samples_ms": [round(float(v), 3) for v in ms_]}


def summarise(args, samples, train_samples, peaks, flops, profiles, load_start, load_end, use_torch):
    """The JSON-ready result: ``samples[(group, member, batch size)]`` and ``train_samples[(member, batch size)]``
    in seconds, ``peaks[(member, batch size)]`` in MB, ``flops[member]`` per image."""
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
                stats = sample_stats(sum((samples[k] for k in keys), []))
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
                    train = sample_stats(train_samples[(member, b)])
                    row.update(train_step_ms=train["median_ms"], train_step_min_ms=train["min_ms"],
                               train_step_max_ms=train["max_ms"], train_images_per_s=b * 1e3 / train["median_ms"])
                if member in profiles and b == args.batch_sizes[-1]:
                    row["profile_ms_by_op_type"] = dict(profiles[member])
                results.append(row)
    return {"meta": {"threads": args.runtime_num_threads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
                     "processor": platform.processor(), "mindspore": ms.__version__, "jit_level": args.jit_level,
                     "repeats": args.repeats, "warmup": args.warmup, "batch_sizes": args.batch_sizes,
                     "quick": args.quick,
                     "load_average_start": list(load_start), "load_average_end": list(load_end),
                     "gemm": {"shape": list(GEMM_SHAPE), "depth": GEMM_DEPTH, "gflop": gemm_flops() * 1e-9},
                     "flops": "per image, by the reference formulas of Dense, Conv2d and attention products"},
            "results": results}
