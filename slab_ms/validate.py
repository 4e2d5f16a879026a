"""Evaluate a checkpoint on the val split: top-1 / top-5 accuracy.

    python -m slab_ms.validate -c configs/demo/slab_deit_demo.yaml [--ckpt_file PATH] [--ckpt_ema] [--deploy]

(also ``python validate.py`` in the repository, ``slab-validate`` once installed.)

Takes the same recipe (and ``--key value`` overrides) as ``train.py``: the model, its ``model_kwargs``,
``image_size`` and the data keys (``data_dir``, ``val_split``, ``crop_pct``, ``interpolation``, ``mean``,
``std``, ``val_batch_size``). The checkpoint is a ``.ckpt`` written by ``train.py`` (default: the run's
final ``<ckpt_dir>/<model>.ckpt``) or an official PyTorch ``.pth``, loaded strictly. ``--ckpt_ema`` evaluates
the EMA weights; ``--deploy`` evaluates the re-parameterized model (``slab_ms.reparam``: norms folded into
the neighbouring Dense/Conv), which must give the same accuracy.
Exit status 0, or 2 with one ``error:`` line for bad input (recipe, data, checkpoint).
"""
import os
import sys
import time


from . import cli
from .data import create_val_loader
from .factory import create_model
from .layers import PRepBNSchedule
from .reparam import reparameterize_model
from .weights import load_checkpoint
from .training.config import ConfigError, build_parser, check_ranges, load_yaml_defaults
from .training.evaluate import Evaluator
from .training.options import DataOptions

TOOL = "validate.py"


def parse_args(argv=None):
    """``train.py``'s options and recipe (its ``--ckpt_file`` is the checkpoint to evaluate) plus ``--deploy``."""
    parser = build_parser(ckpt_help="checkpoint to evaluate (default: <ckpt_dir>/<model>.ckpt)",
                          ckpt_aliases=("--ckpt_path",), ema_aliases=("--eval_ema",))
    parser.description = __doc__.split("\n\n")[0]
    group = parser.add_argument_group("validate")
    group.add_argument("--deploy", type=cli.str2bool, nargs="?", const=True, default=False,
                       help="evaluate the re-parameterized (norm-folded) model")
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        recipe = load_yaml_defaults(parser, pre.config)
        for key in ("ckpt_file", "ckpt_ema"):  # a recipe's ckpt_file is the run's initial weights, not its result
            recipe.pop(key, None)
        parser.set_defaults(**recipe)
    args = parser.parse_args(argv)
    check_ranges(args)
    cli.apply_checkpoint_args(args)
    if not args.model:
        raise ConfigError("no model: set 'model' in the recipe or pass --model NAME")
    if not args.data_dir:
        raise ConfigError("no data: set 'data_dir' in the recipe or pass --data_dir PATH")
    args.ckpt_file = args.ckpt_file or os.path.join(args.ckpt_dir, f"{args.model}.ckpt")
    if not os.path.isfile(args.ckpt_file):
        raise ConfigError(f"checkpoint not found: '{args.ckpt_file}'; pass --ckpt_file (a train.py .ckpt or an "
                          f"official .pth)")
    return args


def build_network(args, num_classes):
    net = create_model(args.model, num_classes=args.num_classes or num_classes, image_size=args.image_size,
                       **args.model_kwargs)
    cli.check_image_size(net, args.image_size, ConfigError)  # before the checkpoint's shapes are compared
    load_checkpoint(net, args.ckpt_file, ema=args.ckpt_ema)
    net.set_train(False)
    PRepBNSchedule.warn_if_unfinished(net, "evaluating")
    if args.deploy:
        net = reparameterize_model(net)
    return net


def _validate(argv):
    args = parse_args(argv)
    cli.set_context(args)
    loader, num_classes = create_val_loader(DataOptions.of(args))
    net = build_network(args, num_classes)
    form = "deploy form, re-parameterized" if args.deploy else "training form"
    print(f"validating {args.model} ({form}{', EMA weights' if args.ckpt_ema else ''}) from {args.ckpt_file} on "
          f"{os.path.join(args.data_dir, args.val_split)}", flush=True)
    start = time.time()
    evaluator = Evaluator(net, num_classes, args.val_batch_size or args.batch_size)
    accuracy = evaluator(loader.create_tuple_iterator(num_epochs=1, output_numpy=True))
    top5_text = f"{accuracy.topk:.2%}" if num_classes > 5 else "n/a (fewer than 6 classes)"
    print(f"top-1 {accuracy.top1:.2%}  top-5 {top5_text}  ({accuracy.count} images, {num_classes} classes, "
          f"{time.time() - start:.1f} s)", flush=True)
    return 0


def main(argv=None):
    return cli.run(TOOL, _validate, argv)


if __name__ == "__main__":
    sys.exit(main())
