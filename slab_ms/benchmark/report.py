"""The results as a table, JSON, CSV and a plot."""
import csv
import json

import numpy as np

from .families import FORM_LABELS


def table(result):
    """The printed table: one line per model with a cell per batch size, then ratios, training and profiles."""
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


def write_json(result, path):
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def write_csv(result, path):
    """One row per model and batch size."""
    fields = ["family", "form", "model", "batch_size", "median_ms", "min_ms", "max_ms", "images_per_s",
              "speedup_vs_baseline", "time_ratio_paired", "time_ratio_q1", "time_ratio_q3", "gflop_per_image",
              "gflop_per_s", "gemm_gflop_per_s", "gemm_fraction",
              "peak_rss_mb", "train_step_ms", "train_images_per_s"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["results"])


def plot(result, path):
    """Latency bars per family and batch size, the baseline dashed, each bar's paired ratio above it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..utils import save_figure
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
