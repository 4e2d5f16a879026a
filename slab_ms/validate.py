"""Evaluate a checkpoint on the val split: top-1 / top-5 accuracy.

    python validate.py -c configs/demo/slab_deit_demo.yaml [--ckpt_path PATH] [--eval_ema] [--deploy]

Takes the same recipe (and ``--key value`` overrides) as ``train.py``: the model, its ``model_kwargs``,
``image_size`` and the data keys (``data_dir``, ``val_split``, ``crop_pct``, ``interpolation``, ``mean``,
``std``, ``val_batch_size``). The checkpoint is a ``.ckpt`` written by ``train.py`` (default: the run's
final ``<ckpt_dir>/<model>.ckpt``) or an official PyTorch ``.pth``, loaded strictly. ``--eval_ema`` evaluates
the EMA weights; ``--deploy`` evaluates the re-parameterized model (``slab_ms.reparam``: norms folded into
the neighbouring Dense/Conv), which must give the same accuracy.
Exit status 0, or 2 with one ``error:`` line for bad input (recipe, data, checkpoint).
"""
import os
import sys
import time

import numpy as np
import mindspore as ms

import slab_ms  # noqa: F401  (registers the SLAB models in MindCV)
from slab_ms.data import create_val_loader
from slab_ms.models._factory import create_model
from slab_ms.training.config import ConfigError, build_parser, load_yaml_defaults, str2bool


def parse_args(argv=None):
    parser = build_parser()
    parser.description = __doc__.split("\n\n")[0]
    group = parser.add_argument_group("validate.py")
    group.add_argument("--ckpt_path", default="", help="checkpoint to evaluate (default: <ckpt_dir>/<model>.ckpt)")
    group.add_argument("--eval_ema", type=str2bool, nargs="?", const=True, default=False,
                       help="evaluate the ema.* weights of a train.py checkpoint (trained with --ema True)")
    group.add_argument("--deploy", type=str2bool, nargs="?", const=True, default=False,
                       help="evaluate the re-parameterized (norm-folded) model")
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_yaml_defaults(parser, pre.config))
    args = parser.parse_args(argv)
    if not args.model:
        raise ConfigError("no model: set 'model' in the recipe or pass --model NAME")
    if not args.data_dir:
        raise ConfigError("no data: set 'data_dir' in the recipe or pass --data_dir PATH")
    args.ckpt_path = args.ckpt_path or os.path.join(args.ckpt_dir, f"{args.model}.ckpt")
    if not os.path.isfile(args.ckpt_path):
        raise ConfigError(f"checkpoint not found: '{args.ckpt_path}'; pass --ckpt_path (a train.py .ckpt or an "
                          f"official .pth)")
    return args


def build_network(args, num_classes):
    net = create_model(args.model, num_classes=args.num_classes or num_classes, image_size=args.image_size,
                       checkpoint_path=args.ckpt_path, ema=args.eval_ema, **args.model_kwargs)
    net.set_train(False)
    if args.deploy:
        from slab_ms.reparam import reparameterize_model
        net = reparameterize_model(net)
    return net


def evaluate(net, loader, batch_size):
    """Top-1 and top-5 accuracy; the last, smaller batch is zero-padded (one compiled graph)."""
    top1 = top5 = count = 0
    for images, labels in loader.create_tuple_iterator(num_epochs=1, output_numpy=True):
        real = len(labels)
        if real < batch_size:
            images = np.concatenate([images, np.zeros((batch_size - real,) + images.shape[1:], images.dtype)])
        logits = net(ms.Tensor(images)).asnumpy()[:real]
        ranked = np.argsort(-logits, axis=1)[:, :5]
        top1 += int((ranked[:, 0] == labels).sum())
        top5 += int((ranked == labels[:, None]).any(axis=1).sum())
        count += real
    return top1 / count, top5 / count, count


def main(argv=None):
    try:
        args = parse_args(argv)
        ms.set_context(mode=ms.GRAPH_MODE if args.mode == 0 else ms.PYNATIVE_MODE)
        ms.set_device(args.device_target)
        if args.runtime_num_threads:
            ms.set_context(runtime_num_threads=args.runtime_num_threads)
        loader, num_classes = create_val_loader(args)
        net = build_network(args, num_classes)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    form = "deploy form, re-parameterized" if args.deploy else "training form"
    print(f"validating {args.model} ({form}{', EMA weights' if args.eval_ema else ''}) from {args.ckpt_path} on "
          f"{os.path.join(args.data_dir, args.val_split)}", flush=True)
    start = time.time()
    top1, top5, count = evaluate(net, loader, args.val_batch_size or args.batch_size)
    top5_text = f"{top5:.2%}" if num_classes > 5 else "n/a (fewer than 6 classes)"
    print(f"top-1 {top1:.2%}  top-5 {top5_text}  ({count} images, {num_classes} classes, "
          f"{time.time() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
