"""Command line and flat yaml recipes for ``train.py`` (MindCV style).

Every yaml key is an argparse option: ``train.py -c recipe.yaml --lr 1e-3`` takes the recipe's values
as defaults and the command line overrides them. A yaml key that is no option is one clear error
naming the key and the closest valid ones (a typo would otherwise silently train the wrong recipe).
"""
import argparse
import difflib
import math
import os

import yaml

from ..cli import (UsageError, add_checkpoint_args, add_device_args, apply_checkpoint_args, json_dict, optional,
                   str2bool, text)
from .mindcv_recipe import add_mindcv_aliases, translate_mindcv_keys
from .options import TrainOptions

__all__ = ["build_parser", "parse_args", "parse_options", "read_recipe", "check_args", "check_ranges", "ConfigError",
           "SAVE_POLICIES"]

# Set in a worker process by msrun (MS_ROLE), mpirun (OMPI_COMM_WORLD_RANK) or an Ascend rank table.
LAUNCHER_ENV = ("MS_ROLE", "OMPI_COMM_WORLD_RANK", "RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH")
SAVE_POLICIES = ("latest_k", "top_k", None)  # None: keep every checkpoint (MindCV's ckpt_save_policy None)
# MindCV's names (case-insensitive) for create_optimizer, create_loss and create_transforms' auto_augment prefixes.
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "lion", "nadam", "adan", "rmsprop", "adagrad", "lamb")
LOSSES = ("ce", "bce", "asl_single_label", "asl_multi_label", "jsd")
AUTO_AUGMENT = ("randaug", "autoaug", "3a", "trivialaugwide", "augmix")


class ConfigError(UsageError):
    """A recipe or command line that cannot be trained as given."""


def erasing_value(value):
    """Random erasing's fill: 'random' or one pixel value, an integer in [0, 255] (what MindSpore takes)."""
    if str(value).lower() == "random":
        return "random"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (number.is_integer() and 0 <= number <= 255):
        raise argparse.ArgumentTypeError(f"expected 'random' or an integer pixel value in [0, 255], got {value!r:.40}")
    return int(number)


def build_parser(ckpt_help="initial weights to fine-tune (strict; .ckpt or official .pth), see prepbn_schedule",
                 ckpt_aliases=("--checkpoint_path",), ema_aliases=()):
    """train.py's parser; validate.py reuses it with its own meaning (and older spellings) of ``--ckpt_file``."""
    parser = argparse.ArgumentParser(
        description="Train a SLAB model (MindSpore). Recipe: -c configs/<family>/<model>.yaml; any key can be "
                    "overridden as --key value.", allow_abbrev=False)
    parser.add_argument("-c", "--config", default="", help="flat yaml recipe whose keys are the options below")

    group = add_device_args(parser)
    group.add_argument("--distribute", type=str2bool, default=False,
                       help="data-parallel over the processes started by msrun")
    group.add_argument("--seed", type=int, default=0)

    group = parser.add_argument_group("data (DataOptions: read by slab_ms.data.create_loaders)")
    group.add_argument("--dataset", type=text, default="imagefolder",
                       help="imagefolder, or digits (the embedded demo, written to data_dir on first use)")
    group.add_argument("--data_dir", type=optional(text), default=None, help="folder with train/ and val/")
    group.add_argument("--train_split", type=text, default="train")
    group.add_argument("--val_split", type=text, default="val")
    group.add_argument("--image_size", type=int, default=224)
    group.add_argument("--batch_size", type=int, default=128, help="per device")
    group.add_argument("--val_batch_size", type=optional(int), default=None)
    group.add_argument("--check_images", type=str2bool, default=True,
                       help="scan every image once at start (False for huge datasets already known good)")
    group.add_argument("--num_parallel_workers", type=int, default=4)
    group.add_argument("--shuffle", type=str2bool, default=True)
    group.add_argument("--drop_remainder", type=str2bool, default=True)
    group.add_argument("--interpolation", type=text, default="bicubic")
    group.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0], help="RandomResizedCrop area range")
    group.add_argument("--ratio", type=float, nargs=2, default=[0.75, 1.333], help="RandomResizedCrop aspect")
    group.add_argument("--hflip", type=float, default=0.5)
    group.add_argument("--color_jitter", type=optional(float), default=None)
    group.add_argument("--auto_augment", type=optional(text), default=None,
                       help="e.g. randaug-m9-mstd0.5-inc1 (the paper's RandAugment)")
    group.add_argument("--re_prob", type=float, default=0.0, help="random erasing probability")
    group.add_argument("--re_value", type=erasing_value, default=0, help="erasing value or 'random'")
    group.add_argument("--crop_pct", type=float, default=0.875)
    group.add_argument("--mean", type=float, nargs=3, default=[123.675, 116.28, 103.53])
    group.add_argument("--std", type=float, nargs=3, default=[58.395, 57.12, 57.375])
    group.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off)")
    group.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0: off)")
    group.add_argument("--mixup_prob", type=float, default=1.0, help="probability of mixing a batch")

    group = parser.add_argument_group("model")
    group.add_argument("--model", type=optional(text), default=None, help="registered model name")
    group.add_argument("--num_classes", type=optional(int), default=None, help="None: from the dataset")
    group.add_argument("--model_kwargs", type=json_dict, default={},
                       help="extra factory kwargs (yaml mapping or JSON), e.g. a tiny test size")
    group.add_argument("--drop_rate", type=float, default=0.0)
    group.add_argument("--drop_path_rate", type=float, default=0.0)
    group = add_checkpoint_args(parser, ckpt_help, aliases=ckpt_aliases, ema_aliases=ema_aliases)
    group.add_argument("--ckpt_exclude", "--checkpoint_exclude", dest="ckpt_exclude", type=text, nargs="*", default=[],
                       help="cells of --ckpt_file left at their initial values, e.g. 'head' to fine-tune on "
                            "another number of classes")
    group.add_argument("--prepbn_schedule", default="continue", choices=["continue", "restart"],
                       help="γ schedule after --ckpt_file weights. continue: keep the checkpoint's step, T "
                            "and warm-up, γ goes on where it was (a finished checkpoint fine-tunes as pure RepBN, "
                            "γ = 0 throughout); an unfinished decay must end within this run, and "
                            "prepbn_decay_steps / _ratio / _warmup_steps, if set, must equal the checkpoint's "
                            "(unused once its decay is finished). restart: γ from 1 again with this recipe's T "
                            "(LayerNorm -> RepBN once more)")
    group.add_argument("--prepbn_decay_steps", type=optional(int), default=None,
                       help="T of the γ schedule in optimizer steps (None: the model's default), for a new run "
                            "or prepbn_schedule restart")
    group.add_argument("--prepbn_decay_ratio", type=optional(float), default=None,
                       help="T as a fraction of the run's optimizer steps (instead of prepbn_decay_steps)")
    group.add_argument("--prepbn_warmup_steps", type=int, default=0,
                       help="optimizer steps of LayerNorm only before γ starts to decay")

    group = parser.add_argument_group("optimisation")
    group.add_argument("--epochs", type=int, default=300)
    group.add_argument("--cooldown_epochs", type=int, default=0, help="extra epochs at min_lr")
    group.add_argument("--opt", type=text, default="adamw")
    group.add_argument("--lr", type=float, default=5e-4, help="base lr (before scale_lr_batch scaling)")
    group.add_argument("--min_lr", type=float, default=5e-6)
    group.add_argument("--warmup_lr", type=float, default=5e-7)
    group.add_argument("--warmup_epochs", type=float, default=20)
    group.add_argument("--scheduler", type=text, default="timm_cosine",
                       help="timm_cosine (the reference's per-step cosine) or a MindCV scheduler name "
                            "(cosine_decay, constant, ...)")
    group.add_argument("--scale_lr_batch", type=int, default=0,
                       help="multiply lr, warmup_lr, min_lr by total batch / this (512 in the paper; 0: off)")
    group.add_argument("--weight_decay", type=float, default=0.05)
    group.add_argument("--momentum", type=float, default=0.9)
    group.add_argument("--beta1", type=float, default=0.9)
    group.add_argument("--beta2", type=float, default=0.999)
    group.add_argument("--clip_grad", type=optional(float), default=None, help="max global grad norm (None: off)")
    group.add_argument("--accumulate_steps", type=int, default=1, help="micro-batches per optimizer step")
    group.add_argument("--loss", type=text, default="CE")
    group.add_argument("--label_smoothing", type=float, default=0.0)
    group.add_argument("--amp_level", default="O0", choices=["O0", "O1", "O2", "O3"])
    group.add_argument("--loss_scale", type=float, default=1.0,
                       help="loss scale: the fixed one, or the initial one of a dynamic scale")
    group.add_argument("--loss_scale_type", default="fixed", choices=["fixed", "dynamic"],
                       help="dynamic: MindSpore's DynamicLossScaleUpdateCell (÷2 on overflow, not below 1; ×2 after "
                            "2000 steps without one); it always skips overflow steps")
    group.add_argument("--drop_overflow_update", type=str2bool, default=False,
                       help="skip an optimizer step whose gradients overflow (inf/NaN): optimizer, lr index, γ and "
                            "EMA do not advance (required by loss_scale_type dynamic); False: a non-finite "
                            "gradient stops training")
    group.add_argument("--ema", type=str2bool, default=False)
    group.add_argument("--ema_decay", type=float, default=0.9999)
    group.add_argument("--bn_recalib_epochs", type=int, default=0,
                       help="final passes with frozen weights that only re-estimate BN statistics (paper: 10)")

    group.add_argument("--dataset_sink_mode", type=str2bool, default=False,
                       help="run the steps between two host events (progress line, checkpoint, epoch end) as one "
                            "sink through MindSpore's data channel (Ascend, GPU; on CPU, which MindSpore cannot "
                            "sink, the same chunks are fed from the host)")

    group = parser.add_argument_group("checkpoints and logging")
    group.add_argument("--ckpt_dir", type=text, default="./ckpt",
                       help="checkpoints, <model>-config.yaml (the resolved options) and <model>-metrics.csv")
    group.add_argument("--ckpt_interval", type=int, default=0,
                       help="also save every N optimizer steps (0: only at epoch ends)")
    group.add_argument("--ckpt_save_interval", type=int, default=1,
                       help="save at the end of every N-th epoch (and of the last one)")
    group.add_argument("--ckpt_save_policy", type=optional(text), default="latest_k",
                       help="latest_k: keep the newest keep_checkpoint_max checkpoints; top_k: keep the "
                            "keep_checkpoint_max epoch checkpoints of the best validation top-1 (needs "
                            "val_while_train), plus the newest one to resume from; none: keep all")
    group.add_argument("--keep_checkpoint_max", type=int, default=3)
    group.add_argument("--resume", type=text, default="", help="'auto' (newest in ckpt_dir) or a checkpoint path")
    group.add_argument("--log_interval", type=int, default=10, help="optimizer steps between progress lines")
    group.add_argument("--val_while_train", type=str2bool, default=False)
    group.add_argument("--val_interval", type=int, default=1, help="epochs between validations")
    return add_mindcv_aliases(parser)


def _coerce(action, value, key, path):
    """Give a yaml value the option's type (PyYAML reads e.g. 5e-4 as a string) and check its choices
    (argparse checks them on the command line only, not in defaults)."""
    value = _typed(action, value, key, path)
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{path}: key '{key}' is {value!r}; choose one of {', '.join(map(str, action.choices))}")
    return value


def _typed(action, value, key, path):
    if value is None:
        if action.default is None or getattr(action.type, "accepts_none", False):
            return None
        raise ConfigError(f"{path}: key '{key}' is null; leave it out for its default {action.default!r}")
    if action.type is None:
        return value
    try:
        if action.nargs not in (None, "?"):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{path}: key '{key}' needs a list of {action.nargs} values, got {value!r}")
            return [action.type(v) for v in value]
        return action.type(value)
    except (argparse.ArgumentTypeError, TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path}: key '{key}' has an invalid value {value!r} ({err})") from err


# A recipe is a flat mapping of a few KB; PyYAML's scanner slows down quadratically with the nesting depth.
_MAX_RECIPE_BYTES, _MAX_RECIPE_DEPTH = 1 << 20, 32


class _RecipeLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    """``yaml.safe_load`` without aliases (a recipe writes its values out, and nested aliases expand exponentially:
    a 1 KB "billion laughs" file is gigabytes once composed) and at most ``_MAX_RECIPE_DEPTH`` levels deep."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"the alias *{event.anchor[:40]} is not allowed in a recipe "
                                              "(write the value out)", event.start_mark)
        self.depth = getattr(self, "depth", 0) + 1
        try:
            if self.depth > _MAX_RECIPE_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {_MAX_RECIPE_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def fetch_flow_collection_start(self, TokenClass):  # pylint: disable=invalid-name
        if self.flow_level >= _MAX_RECIPE_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"nested deeper than {_MAX_RECIPE_DEPTH} levels",
                                            self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


def load_yaml_defaults(parser, path):
    """The recipe's values as parser defaults; unknown keys are an error naming the closest options.

    A key is an option's name without the dashes; an option's older spellings (e.g. ``checkpoint_path`` for
    ``ckpt_file``) are accepted as keys too, and so are MindCV's recipe keys (``training.mindcv_recipe``).
    """
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: '{path}'")
    if os.path.getsize(path) > _MAX_RECIPE_BYTES:
        raise ConfigError(f"{path}: {os.path.getsize(path)} bytes is not a recipe (a flat yaml mapping of a few KB; "
                          f"at most {_MAX_RECIPE_BYTES})")
    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.load(f, Loader=_RecipeLoader) or {}  # nosec: a safe loader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a readable yaml recipe ({' '.join(str(err).split())})") from err
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path}: a recipe is a flat mapping of option: value")
    actions = {opt[2:]: a for a in parser._actions if a.dest not in ("help", "config")
               for opt in a.option_strings if opt.startswith("--")}
    recipe, refused = translate_mindcv_keys(recipe, set(actions), path)
    if refused:
        raise ConfigError("\n".join(refused))
    unknown = [k for k in recipe if k not in actions]
    if unknown:
        lines = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), list(actions), n=3, cutoff=0.6)
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            lines.append(f"'{key}'{hint}")
        raise ConfigError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} " + "; ".join(lines)
                          + ". Every key must be a train.py option (python train.py --help).")
    return {actions[k].dest: _coerce(actions[k], v, k, path) for k, v in recipe.items()}


def read_recipe(path):
    """A ``train.py`` recipe as ``{option: value}``, checked like ``train.py -c`` checks it (unknown keys, types)."""
    return load_yaml_defaults(build_parser(), path)


def parse_args(argv=None):
    """``-c recipe.yaml`` then ``--key value`` overrides; returns the argparse Namespace.

    Raises ConfigError for a missing/invalid recipe or an unknown key (exit status 2 in train.py).
    """
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_yaml_defaults(parser, pre.config))
    args = parser.parse_args(argv)
    check_args(args)
    apply_checkpoint_args(args)
    return args


def parse_options(argv=None):
    """:func:`parse_args`, as the typed option groups a run is given (``TrainOptions``)."""
    return TrainOptions.from_namespace(parse_args(argv))


# Numeric options and their valid ranges (checked at parse time, so a bad value is one message, not a crash
# in the data pipeline or after an epoch): name -> (low, high, low_open, high_open); None: unbounded. The
# γ schedule, accumulation, loss scale, clipping and checkpoint intervals have their own messages in check_args.
# The upper bounds of the options that size an allocation (images, batches, the per-step lr schedule) stop a typo
# such as image_size 100000 or epochs 1000000000000 before it asks for terabytes.
_MAX_EPOCHS, _MAX_IMAGE_SIZE, _MAX_BATCH = 100_000, 8192, 65536
_RANGES = {
    "image_size": (1, _MAX_IMAGE_SIZE, False, False), "batch_size": (1, _MAX_BATCH, False, False),
    "val_batch_size": (1, _MAX_BATCH, False, False), "num_parallel_workers": (1, None, False, False),
    "epochs": (1, _MAX_EPOCHS, False, False),
    "num_classes": (1, None, False, False), "seed": (0, 2 ** 32 - 1, False, False),
    "runtime_num_threads": (1, None, False, False),
    "cooldown_epochs": (0, _MAX_EPOCHS, False, False), "warmup_epochs": (0, _MAX_EPOCHS, False, False),
    "lr": (0, None, False, False), "min_lr": (0, None, False, False), "warmup_lr": (0, None, False, False),
    "weight_decay": (0, None, False, False), "momentum": (0, 1, False, True), "beta1": (0, 1, False, True),
    "beta2": (0, 1, False, True), "label_smoothing": (0, 1, False, True), "ema_decay": (0, 1, False, False),
    "drop_rate": (0, 1, False, True), "drop_path_rate": (0, 1, False, True), "hflip": (0, 1, False, False),
    "re_prob": (0, 1, False, False), "color_jitter": (0, None, False, False), "crop_pct": (0, 1, True, False),
    "mixup": (0, None, False, False), "cutmix": (0, None, False, False), "mixup_prob": (0, 1, False, False),
    "scale_lr_batch": (0, None, False, False),
    "val_interval": (1, None, False, False), "max_checkpoint_gb": (0, None, True, False),
}
# Options that take several numbers: name -> (low, low_open) for each of them.
_LIST_RANGES = {"scale": (0, True), "ratio": (0, True), "std": (0, True)}


def _in_range(value, low, high, low_open, high_open):
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if low is not None and (value < low or (low_open and value == low)):
        return False
    return high is None or (value < high if high_open else value <= high)


def _range_text(low, high, low_open, high_open):
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def check_ranges(args):
    """Every numeric option within its range (None, where allowed, means "not set"); raises ConfigError."""
    for name, bounds in _RANGES.items():
        value = getattr(args, name, None)
        if value is not None and not _in_range(value, *bounds):
            raise ConfigError(f"{name} must be {_range_text(*bounds)}, got {value}")
    for name, (low, low_open) in _LIST_RANGES.items():
        values = getattr(args, name, None)
        if values is not None and not all(_in_range(v, low, None, low_open, False) for v in values):
            raise ConfigError(f"{name} values must be {_range_text(low, None, low_open, False)}, got {values}")
    for name in ("scale", "ratio"):
        values = getattr(args, name, None)
        if values is not None and values[0] > values[1]:
            raise ConfigError(f"{name} is a range (low high), got {values}")
    if getattr(args, "scale", None) is not None and args.scale[1] > 1:
        raise ConfigError(f"scale is a fraction of the image area, at most 1, got {args.scale}")


def check_args(args):
    """Cross-key checks that need no data or model, after every numeric option's range."""
    check_ranges(args)
    if not args.model:
        raise ConfigError("no model: set 'model' in the recipe or pass --model NAME")
    if not args.data_dir:
        raise ConfigError("no data: set 'data_dir' in the recipe or pass --data_dir PATH")
    if args.distribute and not any(os.getenv(name) for name in LAUNCHER_ENV):
        raise ConfigError("distribute: True trains on the worker processes a launcher starts, and none started this "
                          "one: launch it with bash scripts/run_distribute_train.sh -n N -c RECIPE (msrun), or pass "
                          "--distribute False to train in this one process")
    if args.opt.lower() not in OPTIMIZERS:
        raise ConfigError(f"opt must be one of {', '.join(OPTIMIZERS)}, got '{args.opt}'")
    if args.loss.lower() not in LOSSES:
        raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got '{args.loss}'")
    if args.auto_augment is not None and not args.auto_augment.startswith(AUTO_AUGMENT):
        raise ConfigError(f"auto_augment must start with one of {', '.join(AUTO_AUGMENT)} (e.g. "
                          f"randaug-m9-mstd0.5-inc1), got '{args.auto_augment}'")
    if args.accumulate_steps < 1:
        raise ConfigError(f"accumulate_steps must be >= 1, got {args.accumulate_steps}")
    if args.prepbn_decay_steps is not None and args.prepbn_decay_ratio is not None:
        raise ConfigError("set either prepbn_decay_steps or prepbn_decay_ratio, not both")
    if args.prepbn_decay_steps is not None and args.prepbn_decay_steps <= 0:
        raise ConfigError(f"prepbn_decay_steps must be > 0, got {args.prepbn_decay_steps} "
                          "(a '0 decay steps' model is a pure-RepBN model: norm='repbn')")
    if args.prepbn_decay_ratio is not None and not 0.0 < args.prepbn_decay_ratio <= 1.0:
        raise ConfigError(f"prepbn_decay_ratio must be in (0, 1], got {args.prepbn_decay_ratio}")
    if args.prepbn_warmup_steps < 0:
        raise ConfigError(f"prepbn_warmup_steps must be >= 0, got {args.prepbn_warmup_steps}")
    if args.loss_scale <= 0:
        raise ConfigError(f"loss_scale must be > 0, got {args.loss_scale}")
    if args.clip_grad is not None and args.clip_grad <= 0:
        raise ConfigError(f"clip_grad must be > 0 or None, got {args.clip_grad}")
    if args.ckpt_interval < 0 or args.log_interval < 1 or args.keep_checkpoint_max < 1 or args.ckpt_save_interval < 1:
        raise ConfigError("ckpt_interval >= 0, ckpt_save_interval >= 1, log_interval >= 1 and keep_checkpoint_max >= 1 "
                          "are required")
    if args.ckpt_save_policy not in SAVE_POLICIES:
        raise ConfigError(f"ckpt_save_policy must be latest_k, top_k or none, got '{args.ckpt_save_policy}'")
    if args.ckpt_save_policy == "top_k" and not (args.val_while_train and args.val_split):
        raise ConfigError("ckpt_save_policy top_k ranks epoch checkpoints by validation top-1: set val_while_train "
                          "True (with a val_split), or use latest_k")
    if args.loss_scale_type == "dynamic" and not args.drop_overflow_update:
        raise ConfigError("loss_scale_type dynamic always skips overflow steps (as in MindSpore and MindCV): set "
                          "drop_overflow_update True, or use loss_scale_type fixed")
    if args.bn_recalib_epochs < 0:
        raise ConfigError(f"bn_recalib_epochs must be >= 0, got {args.bn_recalib_epochs}")
