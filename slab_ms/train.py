"""Train a SLAB model: ``python -m slab_ms.train -c configs/<family>/<model>.yaml [--key value ...]``
(also ``python train.py`` in the repository, ``slab-train`` once installed).

Every yaml key is an option (``python train.py --help``); the command line overrides the recipe.
Data-parallel: ``msrun ... python train.py -c ... --distribute True`` (see scripts/run_distribute_train.sh).
Fine-tuning: ``--ckpt_file W`` starts from W's weights and continues W's γ schedule (a finished one:
γ = 0, pure RepBN throughout); ``--prepbn_schedule restart`` starts γ at 1 again with the recipe's T.
Exit status: 0 done, 1 stopped on a non-finite loss (the last good checkpoint is kept), 2 bad input
(recipe, data, schedule or resume checkpoint; nothing written), 130 / 143 stopped by SIGINT (Ctrl-C) /
SIGTERM (one line: the checkpoint ``--resume auto`` continues from, and the command that does).
"""
import shlex
import sys

from . import cli
from .training import NonFiniteLossError, parse_options, train
from .weights.train_state import find_latest

TOOL = "train.py"


def resume_command(argv):
    """``argv`` as a ``python train.py`` command line that continues the run (``--resume auto``)."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--resume="):
            skip = False
            continue
        if arg == "--resume":
            skip = True
            continue
        kept.append(arg)
    return shlex.join(["python", "train.py", *kept, "--resume", "auto"])


def _train(argv):
    argv = sys.argv[1:] if argv is None else list(argv)
    options = parse_options(argv)
    try:
        train(options)
    except NonFiniteLossError as err:
        print(f"{TOOL}: error: {err}", file=sys.stderr, flush=True)
        return 1
    except cli.Interrupted as err:
        latest = find_latest(options.run.ckpt_dir, options.model.model)  # what --resume auto takes
        where = f"the last checkpoint is {latest}" if latest else "no checkpoint was written yet"
        print(f"{TOOL}: interrupted by {err}: {where}; continue with: {resume_command(argv)}", file=sys.stderr,
              flush=True)
        return err.exit_status
    return 0


def main(argv=None):
    return cli.run(TOOL, _train, argv)


if __name__ == "__main__":
    sys.exit(main())
