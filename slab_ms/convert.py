"""Convert an official PyTorch SLAB checkpoint to a MindSpore ``.ckpt`` (torch is not needed).

    python -m slab_ms.convert --model slab_deit_tiny --ckpt_file slab_deit_t.pth --file_name slab_deit_tiny.ckpt

(``slab-convert`` once installed.) The model is built with ``--num_classes`` (default: the rows of the
checkpoint's ``head.weight``) / ``--image_size`` / ``--model_kwargs``, the checkpoint is mapped onto it strictly
(``slab_ms.weights``) and written atomically.
Bad input (unknown model, missing, damaged or foreign checkpoint, a pickle that asks to run code, an existing
output file without ``--overwrite``, an unwritable folder, a name too long, a full disk) is one message and
exit status 2; the written file gets the usual mode (0644 under umask 022).
"""
import argparse
import contextlib
import logging
import os
import sys

from . import cli
from .cli import UsageError
from .factory import check_model_name, create_model
from .utils import check_output_name, check_writable_folder, refuse_existing, remove_stale_temporaries
from .weights import checkpoint_num_classes, load_official_checkpoint, read_state_dict, save_checkpoint

TOOL = "convert.py"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    group = cli.add_model_args(parser)
    # Earlier spellings of this tool.
    group.add_argument("--num-classes", dest="num_classes", type=cli.optional(int), help=argparse.SUPPRESS)
    group.add_argument("--model-kwargs", dest="model_kwargs", type=cli.json_dict, help=argparse.SUPPRESS)
    cli.add_checkpoint_args(parser, "official .pth (or .safetensors / .npz) file", aliases=("--src",),
                            ema_aliases=("--ema",))
    group = parser.add_argument_group("output")
    group.add_argument("--file_name", "--dst", dest="file_name", default="", help="output .ckpt file")
    group.add_argument("--overwrite", type=cli.str2bool, nargs="?", const=True, default=False,
                       help="replace an existing output file (default: refuse)")
    return parser.parse_args(argv)


def _convert(argv):
    args = parse_args(argv)
    cli.apply_checkpoint_args(args)
    check_model_name(args.model, UsageError)
    if not args.ckpt_file or not args.file_name:
        raise UsageError("pass --ckpt_file (the official .pth) and --file_name (the .ckpt to write)")
    if os.path.isdir(args.file_name) or not os.path.basename(args.file_name):
        raise UsageError(f"--file_name '{args.file_name}' is a folder; give the path of the .ckpt to write")
    folder = os.path.dirname(os.path.abspath(args.file_name))
    check_output_name(args.file_name, "--file_name", ".ckpt")
    if not args.overwrite:
        refuse_existing(args.file_name)
    created = check_writable_folder(folder, "the folder of --file_name")
    for stale in remove_stale_temporaries(folder):
        print(f"{TOOL}: removed '{stale}', a temporary file left by a killed run")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        state_dict = read_state_dict(args.ckpt_file, use_ema=args.ckpt_ema)
        num_classes = args.num_classes or checkpoint_num_classes(state_dict)
        net = create_model(args.model, num_classes=num_classes, **cli.factory_kwargs(args))
        load_official_checkpoint(net, state_dict)
        save_checkpoint(net, args.file_name, overwrite=args.overwrite)
    except BaseException:
        if created:  # a failed conversion leaves no new folder behind
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    print(f"wrote {args.file_name} ({sum(p.size for p in net.get_parameters()):,} values)")
    return 0


def main(argv=None):
    return cli.run(TOOL, _convert, argv)


if __name__ == "__main__":
    sys.exit(main())
