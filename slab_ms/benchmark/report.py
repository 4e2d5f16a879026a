"""The results as a table, JSON, CSV and a plot."""
import csv
import json
import textwrap

import numpy as np

from .families import FORM_LABELS


def _ratio(value, low=None, high=None):
    """A ratio cell: "0.85", with "[0.80-0.90]" when quartiles are given; "—" for a row without a counterpart."""
    if value is None:
        return "—"
    return f"{value:.2f}" + (f" [{low:.2f}-{high:.2f}]" if low is not None else "")


def table(result):
    """The printed table: one line per model with a cell per batch size, then ratios, training and profiles."""
    batch_sizes = result["meta"]["batch_sizes"]
    with_torch = "torch" in result["meta"]
    width = 30 if with_torch else 22
    cell = 61 + (10 if with_torch else 0)
    head = f"{'model':8} {'form':{width}}" + "".join(
        f" | b={b}: {'ms (min-max)':>21} {'img/s':>7} {'xLN':>5} {'GFLOP/s':>7} {'%GEMM':>5} {'MB':>5}"
        + (f" {'thr':>3} {'÷PT':>5}" if with_torch else "") for b in batch_sizes)
    lines = [head, "-" * len(head)]
    rows = {}
    for row in result["results"]:
        rows.setdefault((row["family_name"], row["form_label"]), {})[row["batch_size"]] = row
    for (family, label), by_b in rows.items():
        cells = []
        for b in batch_sizes:
            r = by_b.get(b)
            if r is None:
                cells.append(" | " + " " * cell)
                continue
            spread = f"{r['median_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f})"
            rate = f"{r['gflop_per_s']:7.1f} {100 * r['gemm_fraction']:4.0f}%" if "gflop_per_s" in r else " " * 13
            peak = f"{r['peak_rss_mb']:5.0f}" if r.get("peak_rss_mb") else "     "
            text = f" | b={b}: {spread:>21} {r['images_per_s']:7.1f} {r['speedup_vs_baseline']:4.2f}x {rate} {peak}"
            if with_torch:
                ratio = _ratio(r.get("ratio_vs_torch")) if r["framework"] == "mindspore" else ""
                text += f" {r['threads'] or '':>3} {ratio:>5}"
            cells.append(text)
        lines.append(f"{family:8} {label:{width}}" + "".join(cells))
    gemm = {r["batch_size"]: r["gemm_gflop_per_s"] for r in result["results"]}
    lines.append("xLN: baseline (LayerNorm + softmax) median / this median, both from the same interleaved group; "
                 "MB: the model process's peak RSS" + ("; thr: the row's threads; ÷PT: ours / its PyTorch "
                                                         "counterpart, paired (— : none)" if with_torch else ""))
    lines.append("GEMM reference (same groups, median over groups): " + ", ".join(
        f"{np.median([r['gemm_gflop_per_s'] for r in result['results'] if r['batch_size'] == b]):.0f} GFLOP/s "
        f"(b={b} groups)" for b in sorted(gemm)))
    lines.append("paired time ratio: this ms / the baseline's ms of the same round, median [25-75 %] over the "
                 "rounds (lower is faster):")
    for (family, label), by_b in rows.items():
        if label != FORM_LABELS["ln"] and next(iter(by_b.values()))["framework"] == "mindspore":
            lines.append(f"  {family:8} {label:{width}}" + "".join(
                f"  b={b}: {_ratio(r['time_ratio_paired'], r['time_ratio_q1'], r['time_ratio_q3'])}"
                for b, r in sorted(by_b.items())))
    if with_torch:
        lines.extend(_torch_lines(result))
    for r in result["results"]:
        if "train_step_ms" in r:
            ratio = (f", ours ÷ PyTorch {r['train_ratio_vs_torch']:.2f}"
                     if r["framework"] == "mindspore" and "train_ratio_vs_torch" in r else "")
            lines.append(f"train step {r['family_name']:8} {r['form_label']:{width}} b={r['batch_size']}: "
                         f"{r['train_step_ms']:.1f} ms ({r['train_step_min_ms']:.1f}-{r['train_step_max_ms']:.1f}), "
                         f"{r['train_images_per_s']:.1f} img/s{ratio}")
    for r in result["results"]:
        if "profile_ms_by_op_type" in r:
            top = ", ".join(f"{op} {t:.1f}" for op, t in r["profile_ms_by_op_type"].items())
            lines.append(f"profile {r['family_name']} {r['form_label']} b={r['batch_size']} (ms per call): {top}")
    return "\n".join(lines)


def _torch_lines(result):
    """Ours ÷ PyTorch per form and batch size, and what each counterpart is."""
    lines = ["ours ÷ PyTorch: our ms / the counterpart's ms of the same round, median [25-75 %] over the rounds "
             "(lower: ours is faster; — : no counterpart):"]
    ours = {}
    for r in result["results"]:
        if r["framework"] == "mindspore":
            ours.setdefault((r["family_name"], r["form_label"]), []).append(r)
    for (family, label), rows in ours.items():
        lines.append(f"  {family:8} {label:22}" + "".join(
            f"  b={r['batch_size']}: "
            + _ratio(r.get("ratio_vs_torch"), r.get("ratio_vs_torch_q1"), r.get("ratio_vs_torch_q3")) for r in rows))
    seen = set()
    for r in result["results"]:
        if r["framework"] == "pytorch" and (r["family"], r["form"]) not in seen:
            seen.add((r["family"], r["form"]))
            fold = (f", {r['folded_norms']} RepBN folded, max|Δlogit| vs unfolded {r['fold_max_abs_diff']:.1e}"
                    if "fold_max_abs_diff" in r else "")
            threads = ", ".join(f"b={o['batch_size']}: {o['threads']}" for o in result["results"] if
                                o["framework"] == "pytorch" and (o["family"], o["form"]) == (r["family"], r["form"]))
            lines.append(f"  counterpart of {r['family_name']} {r['form']}: {r['model']} (torch threads {threads}"
                         f"{fold})")
    meta = result["meta"]
    load = max(meta["load_average_start"][0], meta["load_average_end"][0])
    if load > meta["cpu_count"]:
        lines.append(f"  load average {load:.1f} on {meta['cpu_count']} CPU(s): other processes held the CPUs; "
                     "PyTorch's OpenMP threads wait on each other when the system deschedules one and lose far more "
                     "than one thread does (--torch_threads best finds this), so compare on a quiet machine")
    return lines


def write_json(result, path):
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def write_csv(result, path):
    """One row per model and batch size."""
    fields = ["family", "form", "framework", "model", "batch_size", "threads", "median_ms", "min_ms", "max_ms",
              "images_per_s", "speedup_vs_baseline", "time_ratio_paired", "time_ratio_q1", "time_ratio_q3",
              "gflop_per_image", "gflop_per_s", "gemm_gflop_per_s", "gemm_fraction", "peak_rss_mb", "train_step_ms",
              "train_images_per_s", "torch_median_ms", "ratio_vs_torch", "ratio_vs_torch_q1", "ratio_vs_torch_q3",
              "torch_train_step_ms", "train_ratio_vs_torch", "fold_max_abs_diff"]
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
    width = (5.6 if "torch" in result["meta"] else 3.2) * len(families)  # room for the counterparts' bars
    fig, axes = plt.subplots(len(batch_sizes), len(families), squeeze=False, figsize=(width, 3.0 * len(batch_sizes)))
    for i, b in enumerate(batch_sizes):
        for j, family in enumerate(families):
            ax = axes[i][j]
            rows = [r for r in result["results"] if r["family"] == family and r["batch_size"] == b]
            medians = [r["median_ms"] for r in rows]
            errors = [[m - r["min_ms"] for m, r in zip(medians, rows)],
                      [r["max_ms"] - m for m, r in zip(medians, rows)]]
            colours = {"pytorch": "tab:orange", "ln": "grey"}
            ax.bar(range(len(rows)), medians, yerr=errors, capsize=2,
                   color=[colours.get(r["framework"], colours.get(r["form"], "tab:blue")) for r in rows])
            for x, r in enumerate(rows):  # ours: the paired ratio to the baseline; PyTorch: ours ÷ it
                torch_row = r["framework"] == "pytorch"
                if r["form"] != "ln" or torch_row:
                    text = f"÷{r['ratio_vs_torch']:.2f}" if torch_row else f"{r['time_ratio_paired']:.2f}"
                    ax.annotate(text, (x, r["max_ms"]), xytext=(0, 2),
                                textcoords="offset points", ha="center", va="bottom", fontsize=7,
                                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
            baseline = next((r["median_ms"] for r in rows if r["form"] == "ln" and r["framework"] == "mindspore"),
                            None)
            if baseline:
                ax.axhline(baseline, color="black", linestyle="--", linewidth=0.8)
            ax.set_xticks(range(len(rows)), [r["form"] + (" (PyTorch)" if r["framework"] == "pytorch" else "")
                                             for r in rows], rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{rows[0]['family_name'] if rows else family}, batch {b}", fontsize=9)
            ax.set_ylabel("ms per batch (median, min-max)", fontsize=7)
            ax.margins(y=0.12)  # room for the ratios
    title = ("above each bar: its time / the LayerNorm baseline's (dashed) in the same round, median over the "
             "rounds; lower is faster")
    if "torch" in result["meta"]:
        title += "\nPyTorch counterparts in orange, above them ÷: our form's time / theirs in the same round"
    fig.suptitle("\n".join(textwrap.fill(line, int(16 * width)) for line in title.split("\n")), fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
