"""The paper's ablations at small scale: one small DeiT trained with each norm and each attention, several seeds.

    bash scripts/run_ablation.sh            # or: python -m slab_ms.experiments.ablation
    python -m slab_ms.experiments.ablation --quick --variants ln,prepbn --seeds 1    # seconds (the tests)

Variants (the same model, budget and hyper-parameters; only the norm or the attention changes):

* norm, softmax attention (paper Table 7, DeiT-T, drop-path 0: BN 71.9, BN + progressive 73.1, RepBN +
  progressive = PRepBN 73.6; LayerNorm 72.2 from Table A2): ``ln``, ``bn``, ``bn_prog`` (γ·LN + (1 − γ)·BN),
  ``repbn``, ``prepbn`` (γ·LN + (1 − γ)·RepBN);
* attention, LayerNorm (Table 6 swaps Flatten's focused linear attention for SLA; we start from softmax):
  ``sla_nodwc`` (SLA without its depth-wise conv) and ``sla``.

The progressive variants decay γ linearly from 1 to 0 over the first ``--prepbn_decay_ratio`` of the optimizer
steps (advanced inside the compiled train step) and train the rest as pure BN / RepBN; they are evaluated in the
pure BN / RepBN form. Every model mean-pools its tokens (no class token), so the attention variants differ in
the attention only.

Default data: 16x16 scenes of scikit-learn's 8x8 digits (``slab_ms.data.digit_scenes``: one digit per image,
scaled 1.6-1.8x with per-axis stretch, rotated +-20 degrees, sheared, over 3 clutter fragments of other digits,
Gaussian noise 0.15); train and val scenes use disjoint glyphs. ``--data_dir`` reads any ImageFolder
(``train/<class>/<image>``, ``val/...``) instead, resized to ``--image_size``.

Writes ``--csv`` (one row per run and epoch: train loss, val loss, val accuracy, γ at the end of the epoch,
lr, seconds; γ is the LayerNorm weight of the mixture: 1 for LN, 0 for BN / RepBN) and ``--plot`` (curves and
final accuracies, mean ± std over seeds), by default into a new ``output/ablation/<date-time>/``, prints progress
and a Markdown table. An existing ``--csv`` / ``--plot`` is refused unless ``--overwrite``. Bad input is one
``ablation: error: ...`` line and exit status 2.
"""
import argparse
import csv
import functools
import math
import os
import sys
import time

import numpy as np

from .. import cli

TOOL = "ablation"
print_now = functools.partial(print, flush=True)

# name -> (factory kwargs, paper row, paper top-1 or None)
VARIANTS = {
    "ln": (dict(norm="ln", attn="softmax"), "DeiT-T (LayerNorm), Table A2", 72.2),
    "bn": (dict(norm="bn", attn="softmax"), "DeiT-T-BN, Table 7", 71.9),
    "bn_prog": (dict(norm="pbn", attn="softmax"), "+ progressive strategy, Table 7", 73.1),
    "repbn": (dict(norm="repbn", attn="softmax"), "RepBN without progressive (not in the paper)", None),
    "prepbn": (dict(norm="prepbn", attn="softmax"), "+ progressive + RepBN (PRepBN), Table 7", 73.6),
    "sla_nodwc": (dict(norm="ln", attn="sla", kernel_size=0), "SLA without DWC (not in the paper)", None),
    "sla": (dict(norm="ln", attn="sla", kernel_size=3), "+ SLA, Table 6 (from Flatten, not softmax)", 73.0),
}
PROGRESSIVE = ("prepbn", "pbn")

FULL = dict(seeds=3, epochs=8, batch_size=64, train_images=2048, val_images=1000, lr=2e-3, embed_dim=64, depth=4,
            num_heads=2, mlp_ratio=2.0, image_size=16, patch_size=4)
QUICK = dict(seeds=2, epochs=2, batch_size=16, train_images=64, val_images=40, lr=2e-3, embed_dim=16, depth=1,
             num_heads=2, mlp_ratio=2.0, image_size=16, patch_size=4)
SCENES = dict(digits_per_image=1, scale_range=(1.6, 1.8), rotation=20.0, shear=0.2, noise=0.15, distractors=3)
CSV_FIELDS = ("variant", "seed", "epoch", "step", "lr", "train_loss", "val_loss", "val_acc", "gamma", "seconds")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=TOOL, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    cli.add_budget_args(parser, FULL, QUICK, "a tiny model on a few images (seconds, for tests)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--warmup_epochs", type=float, default=1.0)
    parser.add_argument("--prepbn_decay_ratio", type=float, default=0.7,
                        help="γ decays from 1 to 0 over this fraction of the optimizer steps (progressive variants)")
    parser.add_argument("--data_dir", default=None, help="an ImageFolder (train/<class>/<image>, val/...) instead of "
                                                        "the digit scenes")
    parser.add_argument("--csv", default=None, help="CSV path (default: ablation.csv in a new "
                                                    "output/ablation/<date-time>/ folder)")
    parser.add_argument("--plot", default=None, help="PNG path (default: the CSV's, with .png)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --csv / --plot files")
    parser.add_argument("--threads", type=int, default=2, help="MindSpore CPU op threads")
    args = parser.parse_args(argv)
    cli.apply_budget(args, FULL, QUICK)
    args.plot = args.plot or (os.path.splitext(args.csv)[0] + ".png" if args.csv else None)
    return args


def check_args(args):
    from ..cli import UsageError
    for name in ("seeds", "epochs", "batch_size", "train_images", "val_images", "embed_dim", "depth", "num_heads",
                 "image_size", "patch_size", "threads"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.lr > 0 or not args.mlp_ratio > 0 or args.weight_decay < 0 or args.warmup_epochs < 0:
        raise UsageError("--lr and --mlp_ratio must be > 0, --weight_decay and --warmup_epochs >= 0")
    if not 0 < args.prepbn_decay_ratio <= 1:
        raise UsageError(f"--prepbn_decay_ratio must be in (0, 1], got {args.prepbn_decay_ratio}")
    if args.image_size % args.patch_size or args.embed_dim % args.num_heads:
        raise UsageError(f"--image_size {args.image_size} must be a multiple of --patch_size {args.patch_size} and "
                         f"--embed_dim {args.embed_dim} of --num_heads {args.num_heads}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if not variants or bad or len(set(variants)) != len(variants):
        raise UsageError(f"--variants takes distinct names from {', '.join(VARIANTS)}, got '{args.variants}'")
    args.variants = variants
    if args.data_dir is None and args.train_images < args.batch_size:
        raise UsageError(f"--train_images {args.train_images} is below --batch_size {args.batch_size}")
    for path in (args.csv, args.plot):
        if path is None:
            continue  # a default: written to a new folder
        if os.path.exists(path) and not args.overwrite:
            raise UsageError(f"'{path}' exists; pass --overwrite to replace it, or another --csv / --plot")
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UsageError(f"'{folder}' is not a folder")


# ----------------------------------------------------------------------------------------------- data
def scene_data(args):
    """``(train_x, train_y, val_x, val_y, num_classes, description)`` from the digit scenes, float32 NCHW."""
    from ..data import digit_scenes
    out = []
    for split, count in (("train", args.train_images), ("val", args.val_images)):
        scenes = digit_scenes(count, canvas_size=args.image_size, seed=0, split=split, **SCENES)
        out += [scenes.images[:, None], np.concatenate(scenes.labels).astype(np.int32)]
    text = (f"digit scenes {args.image_size}x{args.image_size}: {args.train_images} train / {args.val_images} val "
            f"images from disjoint glyphs ({', '.join(f'{k}={v}' for k, v in SCENES.items())})")
    return (*out, 10, text)


def folder_data(args):
    """The same from an ImageFolder, every image resized to ``image_size`` (RGB)."""
    from PIL import Image
    from ..data.imagefolder import check_split, image_files
    root = os.path.abspath(args.data_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--data_dir '{args.data_dir}' does not exist")
    classes, _ = check_split(root, "train", True, "train")
    val_classes, _ = check_split(root, "val", True, "val")
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise ValueError(f"val classes not in the train split: {', '.join(unknown[:10])}")
    out = []
    for split in ("train", "val"):
        images, labels = [], []
        for index, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            for path in (image_files(folder) if os.path.isdir(folder) else []):
                with Image.open(path) as image:
                    image = image.convert("RGB").resize((args.image_size, args.image_size), Image.BILINEAR)
                    images.append(np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0)
                labels.append(index)
        out += [np.stack(images), np.asarray(labels, np.int32)]
    if len(out[0]) < args.batch_size:
        raise ValueError(f"the train split has {len(out[0])} images, fewer than --batch_size {args.batch_size}")
    return (*out, len(classes), f"ImageFolder {root}: {len(out[0])} train / {len(out[2])} val images, "
                                f"{len(classes)} classes, resized to {args.image_size}x{args.image_size}")


# ---------------------------------------------------------------------------------------------- training
def build(args, variant, in_channels, num_classes, total_steps):
    from ..factory import create_model
    kwargs = dict(VARIANTS[variant][0])
    if kwargs["norm"] in PROGRESSIVE:
        kwargs["prepbn_decay_steps"] = max(1, int(args.prepbn_decay_ratio * total_steps))
    return create_model("deit_tiny_prepbn", num_classes=num_classes, in_channels=in_channels,
                        image_size=args.image_size, patch_size=args.patch_size, embed_dim=args.embed_dim,
                        depth=args.depth, num_heads=args.num_heads, mlp_ratio=args.mlp_ratio, global_pool="avg",
                        drop_path_rate=0.0, **kwargs)


def gamma_of(net, variant):
    """The LayerNorm weight of the norms' mixture: γ for the progressive variants, 1 for LN, 0 for BN / RepBN."""
    from ..layers import PRepBNSchedule
    schedule = PRepBNSchedule.of(net)
    if schedule is not None:
        return schedule.gamma_value()
    return 1.0 if VARIANTS[variant][0]["norm"] == "ln" else 0.0


def val_batches(x, y, batch_size):
    """``(batches, batch_size)``: the val set as ``(images, labels)`` batches (the last one may be smaller)."""
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)], batch_size


class Runner:
    """One variant's model, optimizer and compiled train step, trained once per seed.

    The graphs are compiled for the first seed only: each later seed assigns (``ops.assign``, seen by the
    compiled graphs) the initial weights of a model freshly built under that seed, the optimizer's initial
    state (zero moments, step 0) and γ step 0, so a seed's run is the run of a freshly built model. ``val``:
    the val set (``val_batches``), or None for a runner that is not evaluated.
    """

    def __init__(self, args, variant, data, val):
        from mindspore import nn
        from ..training import NetWithLoss, TrainStep, build_optimizer
        from ..training.evaluate import Evaluator
        from ..training.lr_schedule import timm_cosine_lr

        self.args, self.variant, self.val = args, variant, val
        self.train_x, self.train_y, self.num_classes = data
        self.steps_per_epoch = len(self.train_x) // args.batch_size
        self.total = self.steps_per_epoch * args.epochs
        self.lrs = timm_cosine_lr(self.steps_per_epoch, args.epochs, 0, args.warmup_epochs, args.lr, args.lr * 0.01,
                                  args.lr * 0.01)
        self.net = self._build(0)
        self.evaluator = Evaluator(self.net, self.num_classes, val[1]) if val else None
        opt_args = argparse.Namespace(opt="adamw", beta1=0.9, beta2=0.999, weight_decay=args.weight_decay,
                                      momentum=0.9)
        self.optimizer = build_optimizer(self.net, opt_args, self.lrs)
        self.step = TrainStep(NetWithLoss(self.net, nn.CrossEntropyLoss(label_smoothing=0.1)), self.optimizer,
                              self.net, clip_grad=5.0)
        own = {id(p) for p in self.net.get_parameters()}
        self.optimizer_start = [(p, p.asnumpy().copy()) for p in self.optimizer.get_parameters() if id(p) not in own]
        self.seeded = 0

    def _build(self, seed):
        import mindspore as ms
        ms.set_seed(seed)
        return build(self.args, self.variant, self.train_x.shape[1], self.num_classes, self.total)

    def _reset(self, seed):
        from mindspore import Tensor, ops
        if seed == self.seeded:
            return
        fresh = {p.name: p for p in self._build(seed).get_parameters()}
        for param in self.net.get_parameters():
            ops.assign(param, fresh[param.name].value())
        for param, value in self.optimizer_start:
            ops.assign(param, Tensor(value))
        self.seeded = seed

    def run(self, seed, writer, progress):
        """Train from the initial weights of ``seed``; one CSV row per epoch; returns the last row."""
        from mindspore import Tensor
        from ..layers import PRepBNSchedule
        from ..training import GammaDecay

        self._reset(seed)
        args, net = self.args, self.net
        check = None
        if PRepBNSchedule.of(net) is not None:
            check = GammaDecay(net, optimizer=self.optimizer, total_steps=self.total, in_graph=True,
                               print_fn=lambda _: None)
            check.on_train_begin()
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        row = None
        for epoch in range(1, args.epochs + 1):
            net.set_train(True)
            order = rng.permutation(len(self.train_x))
            losses = []
            for i in range(self.steps_per_epoch):
                index = order[i * args.batch_size:(i + 1) * args.batch_size]
                loss, _ = self.step(Tensor(self.train_x[index]), Tensor(self.train_y[index]))
                losses.append(float(loss.asnumpy()))
                if check is not None:
                    check.on_train_step_end()
            if check is not None and epoch == args.epochs:
                check.on_train_end()  # γ = 0: the run trained into the pure BN / RepBN form it is evaluated in
            accuracy = self.evaluator(self.val[0])
            row = dict(variant=self.variant, seed=seed, epoch=epoch, step=epoch * self.steps_per_epoch,
                       lr=self.lrs[epoch * self.steps_per_epoch - 1], train_loss=float(np.mean(losses)),
                       val_loss=accuracy.loss, val_acc=accuracy.top1, gamma=gamma_of(net, self.variant),
                       seconds=time.perf_counter() - start)
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
            progress(self.variant, seed, epoch, row)
        return row


# ---------------------------------------------------------------------------------------------- results
def summarize(rows, variants):
    """``{variant: dict(mean, std, runs, accs, collapsed)}`` from the last epoch of each run (accuracy in %)."""
    last = {}
    for row in rows:
        key = (row["variant"], row["seed"])
        if key not in last or row["epoch"] > last[key]["epoch"]:
            last[key] = row
    out = {}
    for variant in variants:
        finals = [r for (v, _), r in sorted(last.items()) if v == variant]
        accs = np.array([100.0 * r["val_acc"] for r in finals])
        collapsed = sum(1 for r in finals if not math.isfinite(r["train_loss"]))
        out[variant] = dict(mean=float(accs.mean()), std=float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
                            runs=len(accs), accs=accs.tolist(), collapsed=collapsed)
    return out


def markdown_table(summary):
    lines = ["| variant | paper row | paper top-1 | ours: val top-1 (mean ± std) | runs | min – max |",
             "|---|---|---|---|---|---|"]
    for variant, s in summary.items():
        _, row, paper = VARIANTS[variant]
        paper = f"{paper:.1f}" if paper is not None else "–"
        collapsed = f" ({s['collapsed']} collapsed)" if s["collapsed"] else ""
        lines.append(f"| `{variant}` | {row} | {paper} | {s['mean']:.1f} ± {s['std']:.1f} | {s['runs']}{collapsed} | "
                     f"{min(s['accs']):.1f} – {max(s['accs']):.1f} |")
    return "\n".join(lines)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in CSV_FIELDS[1:]:
            row[key] = int(row[key]) if key in ("seed", "epoch", "step") else float(row[key])
    return rows


def plot(rows, summary, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..utils import save_figure

    variants = list(summary)
    colors = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), dpi=72)
    for variant in variants:
        runs = {}
        for row in rows:
            if row["variant"] == variant:
                runs.setdefault(row["seed"], []).append(row)
        epochs = [r["epoch"] for r in next(iter(runs.values()))]
        for ax, key, scale in ((axes[0], "train_loss", 1.0), (axes[1], "val_acc", 100.0), (axes[2], "gamma", 1.0)):
            values = np.array([[r[key] * scale for r in run] for run in runs.values()])
            mean = values.mean(0)
            ax.plot(epochs, mean, color=colors[variant], label=variant, lw=1.5)
            if len(values) > 1:
                ax.fill_between(epochs, values.min(0), values.max(0), color=colors[variant], alpha=0.15, lw=0)
    for ax, label in zip(axes[:3], ("train loss", "val top-1 (%)", "γ (LayerNorm weight)")):
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    means = [summary[v]["mean"] for v in variants]
    stds = [summary[v]["std"] for v in variants]
    axes[3].bar(range(len(variants)), means, yerr=stds, color=[colors[v] for v in variants], capsize=3)
    for i, v in enumerate(variants):
        axes[3].scatter([i] * len(summary[v]["accs"]), summary[v]["accs"], s=8, color="black", zorder=3)
    axes[3].set_xticks(range(len(variants)))
    axes[3].set_xticklabels(variants, rotation=45, ha="right", fontsize=8)
    low = min(min(s["accs"]) for s in summary.values())
    axes[3].set_ylim(max(0.0, low - 10.0), min(100.0, max(m + s for m, s in zip(means, stds)) + 5.0))
    axes[3].set_title("final val top-1 (%), mean ± std, dots: seeds", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _ablation(argv):
    args = parse_args(argv)
    check_args(args)
    from ..training.callbacks import format_seconds
    from ..utils import atomic_output, new_run_folder

    cli.cpu_graph_mode(args.threads)
    if args.csv is None:
        args.csv = os.path.join(new_run_folder(os.path.join("output", "ablation")), "ablation.csv")
        args.plot = args.plot or os.path.splitext(args.csv)[0] + ".png"
    wall = time.perf_counter()
    load = os.getloadavg()
    train_x, train_y, val_x, val_y, num_classes, text = (folder_data if args.data_dir else scene_data)(args)
    mean, std = float(train_x.mean()), float(train_x.std()) or 1.0
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std  # one normalisation from the train images
    val = val_batches(val_x, val_y, min(250, len(val_x)))
    runs = [(v, s) for v in args.variants for s in range(args.seeds)]
    print_now(f"data: {text}; {len(runs)} runs ({len(args.variants)} variants x {args.seeds} seeds) of {args.epochs} "
              f"epochs x {len(train_x) // args.batch_size} steps, batch {args.batch_size}; model: DeiT depth "
              f"{args.depth}, width {args.embed_dim}, {args.num_heads} heads, patch {args.patch_size}; load average "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    done = [0]

    def progress(variant, seed, epoch, row):
        if epoch == args.epochs:
            done[0] += 1
        elapsed = time.perf_counter() - wall
        finished = done[0] + epoch / args.epochs * (epoch != args.epochs)
        eta = format_seconds(elapsed / finished * (len(runs) - finished)) if finished else "?"
        print_now(f"[{variant} seed {seed}] epoch {epoch}/{args.epochs} loss {row['train_loss']:.4f} val loss "
                  f"{row['val_loss']:.4f} val top-1 {100 * row['val_acc']:.1f} % γ {row['gamma']:.3f}; run "
                  f"{done[0] + (epoch != args.epochs)}/{len(runs)}, elapsed {format_seconds(elapsed)}, ETA {eta}")

    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    with atomic_output(args.csv, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for variant in args.variants:
                runner = Runner(args, variant, (train_x, train_y, num_classes), val)
                for seed in range(args.seeds):
                    runner.run(seed, writer, progress)
    rows = read_csv(args.csv)
    summary = summarize(rows, args.variants)
    load_end = os.getloadavg()
    title = (f"{text.split(':')[0]}; DeiT depth {args.depth} width {args.embed_dim}; {args.epochs} epochs, "
             f"{len(runs) // len(args.variants)} seeds")
    plot(rows, summary, args.plot, title)
    print_now(markdown_table(summary))
    print_now(f"wrote {args.csv} and {args.plot}; wall time {format_seconds(time.perf_counter() - wall)}; load "
              f"average at the end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    return 0


def main(argv=None):
    from ..cli import run
    return run(TOOL, _ablation, argv)


if __name__ == "__main__":
    sys.exit(main())
