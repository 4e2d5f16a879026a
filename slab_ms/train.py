"""Train a SLAB model: ``python -m slab_ms.train -c configs/<family>/<model>.yaml [--key value ...]``
(also ``python train.py`` in the repository, ``slab-train`` once installed).

Every yaml key is an option (``python train.py --help``); the command line overrides the recipe.
Data-parallel: ``msrun ... python train.py -c ... --distribute True`` (see scripts/run_distribute_train.sh).
Fine-tuning: ``--ckpt_file W`` starts from W's weights and continues W's γ schedule (a finished one:
γ = 0, pure RepBN throughout); ``--prepbn_schedule restart`` starts γ at 1 again with the recipe's T.
Exit status: 0 done, 1 stopped on a non-finite loss (the last good checkpoint is kept), 2 bad input
(recipe, data, schedule or resume checkpoint; nothing written).
"""
import sys

from . import cli
from .training import NonFiniteLossError, parse_args, train

TOOL = "train.py"


def _train(argv):
    args = parse_args(argv)
    try:
        train(args)
    except NonFiniteLossError as err:
        print(f"{TOOL}: error: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv=None):
    return cli.run(TOOL, _train, argv)


if __name__ == "__main__":
    sys.exit(main())
