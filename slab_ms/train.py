"""Train a SLAB model: ``python train.py -c configs/<family>/<model>.yaml [--key value ...]``.

Every yaml key is an option (``python train.py --help``); the command line overrides the recipe.
Data-parallel: ``msrun ... python train.py -c ... --distribute True`` (see scripts/run_distribute_train.sh).
Fine-tuning: ``--checkpoint_path W`` starts from W's weights and continues W's γ schedule (a finished one:
γ = 0, pure RepBN throughout); ``--prepbn_schedule restart`` starts γ at 1 again with the recipe's T.
Exit status: 0 done, 1 stopped on a non-finite loss (the last good checkpoint is kept), 2 bad input
(recipe, data, schedule or resume checkpoint; nothing written).
"""
import sys

import slab_ms  # noqa: F401  (registers the SLAB models in MindCV)
from slab_ms.training import ConfigError, NonFiniteLossError, parse_args, train


def main(argv=None):
    try:
        args = parse_args(argv)
        train(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
