"""γ of PRepBN during a real run, step by step: ``python -m slab_ms.experiments.gamma_trace --plot docs/gamma.png``.

Trains the ablation's ``prepbn`` model (``slab_ms.experiments.ablation``: the same data, model and recipe, one
seed) and reads after every optimizer step what the compiled train step left in the model: the γ step counter
(advanced inside the graph), γ = the LayerNorm weight of every PRepBN, 1 − γ = the RepBN weight, the RepBN η of
every layer (``RepBN(x) = BN(x) + η·x``) and the loss. Writes a PNG (and ``--csv``). ``--quick`` is a tiny run.
"""
import argparse
import csv
import sys

import numpy as np

from . import ablation

TOOL = "gamma_trace"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=TOOL, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="the ablation's --quick model and data")
    parser.add_argument("--epochs", type=int, default=None, help="default: the ablation's")
    parser.add_argument("--plot", default="gamma.png")
    parser.add_argument("--csv", default=None, help="also write the per-step trace here")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    base = ablation.parse_args(["--quick"] if args.quick else [])
    base.epochs = args.epochs or base.epochs
    base.variants, base.seeds = "prepbn", 1
    base.csv, base.plot, base.overwrite = args.csv or "", args.plot, args.overwrite
    return args, base


def trace(base):
    """Per optimizer step: ``(step, gamma, mean η, min η, max η, loss)`` rows of one prepbn run."""
    from mindspore import Tensor
    from ..layers import PRepBNSchedule, RepBN

    train_x, train_y, val_x, val_y, num_classes, _ = ablation.scene_data(base)
    mean, std = float(train_x.mean()), float(train_x.std())
    train_x = (train_x - mean) / std
    runner = ablation.Runner(base, "prepbn", (train_x, train_y, num_classes), None)
    net, schedule = runner.net, PRepBNSchedule.of(runner.net)
    etas = [cell.alpha for _, cell in net.cells_and_names() if isinstance(cell, RepBN)]
    rng = np.random.default_rng(0)
    rows = []
    net.set_train(True)
    for epoch in range(base.epochs):
        order = rng.permutation(len(train_x))
        for i in range(runner.steps_per_epoch):
            index = order[i * base.batch_size:(i + 1) * base.batch_size]
            loss, _ = runner.step(Tensor(train_x[index]), Tensor(train_y[index]))
            eta = np.array([float(p.asnumpy()[0]) for p in etas])
            rows.append((schedule.state()["step"], schedule.gamma_value(), eta.mean(), eta.min(), eta.max(),
                         float(loss.asnumpy())))
    schedule.verify_finished(expected_step=runner.total)
    return rows, runner.total


def plot(rows, path, decay_steps, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..utils import save_figure

    step, gamma, eta, eta_min, eta_max, loss = (np.array(c) for c in zip(*rows))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=72)
    axes[0].stackplot(step, gamma, 1 - gamma, labels=("γ · LayerNorm", "(1 − γ) · RepBN"),
                      colors=("#4c72b0", "#dd8452"), alpha=0.8)
    axes[0].axvline(decay_steps, color="black", lw=0.8, ls="--")
    axes[0].set_title("the mixture each PRepBN computes in training", fontsize=10)
    axes[0].legend(fontsize=8, loc="center right")
    axes[0].set_ylim(0, 1)
    axes[1].plot(step, eta, color="#55a868", label="mean η")
    axes[1].fill_between(step, eta_min, eta_max, color="#55a868", alpha=0.2, lw=0, label="min – max over layers")
    axes[1].set_title("RepBN η (BN(x) + η·x)", fontsize=10)
    axes[1].legend(fontsize=8)
    axes[2].plot(step, loss, color="#c44e52", lw=0.6, alpha=0.5)
    window = max(1, len(loss) // 25)
    axes[2].plot(step[window - 1:], np.convolve(loss, np.ones(window) / window, "valid"), color="#c44e52")
    axes[2].set_title("training loss", fontsize=10)
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _main(argv):
    from ..cli import UsageError
    import os
    args, base = parse_args(argv)
    for path in filter(None, (args.plot, args.csv)):
        if os.path.exists(path) and not args.overwrite:
            raise UsageError(f"'{path}' exists; pass --overwrite to replace it")
    if base.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {base.epochs}")
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    rows, total = trace(base)
    decay = max(1, int(base.prepbn_decay_ratio * total))
    if args.csv:
        from ..utils import atomic_output
        with atomic_output(args.csv, suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(("step", "gamma", "eta_mean", "eta_min", "eta_max", "loss"))
            writer.writerows(rows)
    plot(rows, args.plot, decay, f"PRepBN in the ablation's DeiT (depth {base.depth}, width {base.embed_dim}), digit "
                                 f"scenes, {total} steps; γ decays over the first {decay} (dashed), then pure RepBN")
    print(f"{total} steps; γ {rows[0][1]:.3f} after step 1, {rows[-1][1]:.3f} at the end; mean η "
          f"{rows[0][2]:.3f} -> {rows[-1][2]:.3f}; wrote {args.plot}", flush=True)
    return 0


def main(argv=None):
    from ..cli import run
    return run(TOOL, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
