"""Check a device: every model compiles, trains a few steps under mixed precision, folds and exports.

    bash scripts/run_device_check.sh --device_target GPU
    python -m slab_ms.device_check --device_target Ascend --models slab_deit_tiny,slab_swin_tiny --tiny

(``slab-device-check`` once installed.) For each model (every registered one and the LLaMA decoder by default), one
after the other on the chosen device: build it at its full size (``--tiny``: the small test configuration of its
family); train ``--steps`` optimizer steps on random data at AMP level O2 (MindCV's ``auto_mixed_precision``, as
train.py) with a fixed loss scale of 1024, AdamW and the package's ``TrainStep``, the γ schedule of a PRepBN model
decaying over exactly these steps (both branches train, the result is finished); fold it in float32
(``reparameterize_model``); compare the deploy form's outputs with the trained model's in evaluation mode (float32)
on one batch; write the deploy form as MindIR to ``--output_dir``, reload it (``mindspore.load`` + ``nn.GraphCell``)
and compare it the same way. One table row per model, printed as the model finishes:

    model             compile s  step ms   loss  |Δ| deploy  |Δ| MindIR  status
    slab_deit_tiny         41.2     12.5  6.921     1.9e-06     1.9e-06  OK

``compile s`` is the first training step (graph compilation and one step), ``step ms`` the median of the other
steps, ``loss`` the last step's loss, the |Δ| columns max|Δ| against the trained model in evaluation mode. A model
fails (``FAIL`` and the first line of the error) when it does not build, compile or run, a loss is not finite, or
a |Δ| exceeds export.py's tolerance 1e-4 · max(1, max|output|); the other models still run. Exit status 0 when
every model passed, 1 when one failed, 2 for bad input.
"""
import argparse
import gc
import os
import statistics
import sys
import time
from types import SimpleNamespace

import numpy as np
import mindspore as ms
from mindcv.loss import create_loss
from mindcv.utils.amp import auto_mixed_precision

from . import cli
from .cli import UsageError
from .export import as_arrays, max_difference, tolerance, write_checked
from .factory import create_model
from .layers import PRepBNSchedule
from .layers.amp import strip_amp
from .layers.cpu_kernels import use_standard_ops
from .models import CausalLMLoss, create_llama, list_models, tiny_config
from .reparam import reparameterize_model
from .training.train_step import NetWithLoss, TrainStep, build_optimizer
from .utils import check_writable_folder

TOOL = "device_check.py"
LLAMA = {False: "llama_350m", True: "llama_tiny"}  # the decoder's row at full size / with --tiny
LLAMA_TOKENS = {False: 256, True: 16}  # its sequence length
NUM_CLASSES = 1000
AMP_LEVEL = "O2"
LOSS_SCALE = 1024.0
OPTIMIZER = SimpleNamespace(opt="adamw", weight_decay=0.05, momentum=0.9, beta1=0.9, beta2=0.999)
LR = 1e-4
COLUMNS = (("model", 18), ("compile s", 10), ("step ms", 9), ("loss", 8), ("|Δ| deploy", 11), ("|Δ| MindIR", 11))


class CheckFailed(Exception):
    """The model ran but its results are wrong (non-finite loss, deploy or MindIR outputs off)."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    group = parser.add_argument_group("check")
    group.add_argument("--models", type=cli.optional(lambda v: [m for m in v.replace(" ", "").split(",") if m]),
                       default=None, help="comma-separated models (default: every registered model and "
                                          f"{LLAMA[False]} / {LLAMA[True]})")
    group.add_argument("--tiny", action="store_true", help="each family's small test configuration instead of the "
                                                          "full-size model")
    group.add_argument("--steps", type=int, default=5, help="training steps per model (the first one compiles)")
    group.add_argument("--batch_size", type=int, default=8)
    group.add_argument("--image_size", type=cli.optional(int), default=None,
                       help="input height and width of the vision models (default: each model's own)")
    group.add_argument("--output_dir", default=None,
                       help="where the MindIR files go (default: ./output/device_check/<time>); must not hold them yet")
    cli.add_device_args(parser)
    return parser.parse_args(argv)


def check_args(args):
    """Bad input as UsageError, before anything is built; returns the models to check."""
    llama = LLAMA[args.tiny]
    known = list_models() + [llama]
    models = args.models or known
    unknown = [m for m in models if m not in known]
    if unknown:
        raise UsageError(f"unknown --models {', '.join(unknown)}; choose from {', '.join(known)}.")
    if args.steps < 1 or args.batch_size < 1 or (args.image_size is not None and args.image_size < 1):
        raise UsageError(f"--steps, --batch_size and --image_size must be positive, got {args.steps}, "
                         f"{args.batch_size} and {args.image_size}.")
    args.output_dir = args.output_dir or os.path.join("output", "device_check", time.strftime("%Y%m%d-%H%M%S"))
    taken = [m for m in models if os.path.exists(os.path.join(args.output_dir, m + ".mindir"))]
    if taken:
        raise UsageError(f"--output_dir '{args.output_dir}' already holds {', '.join(m + '.mindir' for m in taken)}; "
                         "choose another folder (nothing was run).")
    check_writable_folder(args.output_dir, "--output_dir")
    return models


def build(name, args):
    """``(model, loss, (inputs, labels))`` of one check: a vision model on random images, or the LLaMA decoder on
    random tokens."""
    rng = np.random.default_rng(0)
    if name == LLAMA[args.tiny]:
        net = create_llama(name)
        vocab = net.config.vocab_size
        shape = (args.batch_size, min(LLAMA_TOKENS[args.tiny], net.config.max_position_embeddings))
        return net, CausalLMLoss(vocab), (rng.integers(0, vocab, shape).astype(np.int32),
                                          rng.integers(0, vocab, shape).astype(np.int32))
    kwargs = tiny_config(name) if args.tiny else {}
    if args.image_size is not None:
        kwargs["image_size"] = args.image_size
    net = create_model(name, num_classes=NUM_CLASSES, **kwargs)
    size = kwargs.get("image_size", 224)
    cli.check_image_size(net, size)
    images = rng.standard_normal((args.batch_size, 3, size, size), dtype=np.float32)
    return net, create_loss("CE"), (images, rng.integers(0, NUM_CLASSES, args.batch_size).astype(np.int32))


def train(net, loss_fn, data, steps):
    """``steps`` optimizer steps at AMP level O2; returns (first step's seconds, median seconds of the others or
    None, last loss)."""
    schedule = PRepBNSchedule.of(net)
    if schedule:
        schedule.set(step=0, decay_steps=steps, warmup_steps=0)
    auto_mixed_precision(net, AMP_LEVEL)
    optimizer = build_optimizer(net, OPTIMIZER, [LR] * steps)
    step = TrainStep(NetWithLoss(net, loss_fn), optimizer, net, loss_scale=LOSS_SCALE).set_train()
    inputs, labels = ms.Tensor(data[0]), ms.Tensor(data[1])
    seconds = []
    for i in range(steps):
        start = time.perf_counter()
        loss = float(step(inputs, labels)[0].asnumpy())
        seconds.append(time.perf_counter() - start)
        if not np.isfinite(loss):
            raise CheckFailed(f"loss {loss} at training step {i + 1}")
    return seconds[0], (statistics.median(seconds[1:]) if steps > 1 else None), loss


def check_model(name, args, row):
    """Fill the table row ``row`` (a dict) as the check goes; raises on failure."""
    net, loss_fn, data = build(name, args)
    row["compile s"], row["step ms"], row["loss"] = train(net, loss_fn, data, args.steps)
    net = strip_amp(net).set_train(False)  # the trained model in float32: the reference of the fold
    reference = as_arrays(net(ms.Tensor(data[0])))
    allowed = tolerance(reference)
    deploy = reparameterize_model(net)
    use_standard_ops(deploy)  # the exported graph holds standard MindSpore ops only
    row["|Δ| deploy"] = max_difference(as_arrays(deploy(ms.Tensor(data[0]))), reference)
    if row["|Δ| deploy"] is None or not row["|Δ| deploy"] <= allowed:
        raise CheckFailed(f"deploy form: max|Δ| {row['|Δ| deploy']} > tolerance {allowed:.3g} (None: other shapes)")

    def accept(reloaded):
        row["|Δ| MindIR"] = max_difference(reloaded, reference)
        return row["|Δ| MindIR"] is not None and row["|Δ| MindIR"] <= allowed

    if not write_checked(deploy, data[0], os.path.join(args.output_dir, name + ".mindir"), "MINDIR", accept):
        raise CheckFailed(f"reloaded MindIR: max|Δ| {row['|Δ| MindIR']} > tolerance {allowed:.3g} (None: other "
                          "shapes); the file was not kept")


def format_row(row, status):
    def text(key):
        value = row.get(key)
        if value is None:
            return "-"
        if key == "compile s":
            return f"{value:.1f}"
        if key == "step ms":
            return f"{value * 1000:.1f}"
        if key == "loss":
            return f"{value:.4g}"
        return f"{value:.2g}" if isinstance(value, float) else str(value)
    return "  ".join(text(key).rjust(width) if key != "model" else text(key).ljust(width)
                     for key, width in COLUMNS) + "  " + status


def _device_check(argv):
    args = parse_args(argv)
    models = check_args(args)
    cli.set_context(args)
    print(f"{TOOL}: {len(models)} model(s) on {args.device_target}, {'tiny' if args.tiny else 'full-size'}, "
          f"{args.steps} step(s) at {AMP_LEVEL} (loss scale {LOSS_SCALE:g}), batch {args.batch_size}; MindIR files in "
          f"{args.output_dir}", flush=True)
    print("  ".join(title.rjust(width) if title != "model" else title.ljust(width) for title, width in COLUMNS)
          + "  status", flush=True)
    failed = []
    for name in models:
        row = {"model": name}
        try:
            check_model(name, args, row)
            status = "OK"
        except Exception as err:  # pylint: disable=broad-except  (a failing model must not stop the others)
            lines = str(err).strip().splitlines()
            status = f"FAIL {type(err).__name__}: {lines[0] if lines else ''}"
            failed.append(name)
        print(format_row(row, status), flush=True)
        gc.collect()  # one full-size model at a time
    print(f"{TOOL}: {len(models) - len(failed)} of {len(models)} passed" + (
        f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def main(argv=None):
    return cli.run(TOOL, _device_check, argv)


if __name__ == "__main__":
    sys.exit(main())
