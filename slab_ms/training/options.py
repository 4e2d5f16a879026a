"""``train.py``'s options, parsed and checked once (``config.parse_options``), as typed groups passed explicitly:
what the data pipeline reads (``DataOptions``), the model and its checkpoint and γ schedule (``ModelOptions``),
the optimizer, lr schedule and train step (``OptimOptions``), and the run: device, checkpoints, logging
(``RunOptions``). Each option of the parser is a field of exactly one group, with the parser's name; the
defaults are the parser's (a group is only ever built from a parsed command line and recipe)."""
import dataclasses
from typing import List, Optional, Union

__all__ = ["DataOptions", "ModelOptions", "OptimOptions", "RunOptions", "TrainOptions"]


class _Group:
    @classmethod
    def of(cls, args):
        """The group's options of a parsed argparse Namespace (any parser that has them, e.g. validate.py's)."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class DataOptions(_Group):
    """The ImageFolder loaders' options (``data.create_loaders``, ``data.create_val_loader``)."""
    dataset: str
    data_dir: str
    train_split: str
    val_split: str
    image_size: int
    batch_size: int
    val_batch_size: Optional[int]
    check_images: bool
    num_parallel_workers: int
    shuffle: bool
    drop_remainder: bool
    interpolation: str
    scale: List[float]
    ratio: List[float]
    hflip: float
    color_jitter: Optional[float]
    auto_augment: Optional[str]
    re_prob: float
    re_value: Union[int, str]
    crop_pct: float
    mean: List[float]
    std: List[float]
    mixup: float
    cutmix: float
    mixup_prob: float


@dataclasses.dataclass(frozen=True)
class ModelOptions(_Group):
    """The model, the checkpoint it starts from and its γ schedule."""
    model: str
    num_classes: Optional[int]
    model_kwargs: dict
    drop_rate: float
    drop_path_rate: float
    ckpt_file: Optional[str]
    ckpt_ema: bool
    ckpt_exclude: List[str]
    prepbn_schedule: str
    prepbn_decay_steps: Optional[int]
    prepbn_decay_ratio: Optional[float]
    prepbn_warmup_steps: int


@dataclasses.dataclass(frozen=True)
class OptimOptions(_Group):
    """The optimizer, the lr schedule and the train step (loss, precision, accumulation, EMA, sinking)."""
    epochs: int
    cooldown_epochs: int
    opt: str
    lr: float
    min_lr: float
    warmup_lr: float
    warmup_epochs: float
    scheduler: str
    scale_lr_batch: int
    weight_decay: float
    momentum: float
    beta1: float
    beta2: float
    clip_grad: Optional[float]
    accumulate_steps: int
    loss: str
    label_smoothing: float
    amp_level: str
    loss_scale: float
    loss_scale_type: str
    drop_overflow_update: bool
    ema: bool
    ema_decay: float
    bn_recalib_epochs: int
    dataset_sink_mode: bool


@dataclasses.dataclass(frozen=True)
class RunOptions(_Group):
    """The run: device and processes, seed, what a checkpoint reader accepts, the checkpoint folder and its policy,
    resuming, logging and validation."""
    device_target: Optional[str]
    mode: int
    runtime_num_threads: Optional[int]
    distribute: bool
    seed: int
    max_checkpoint_gb: float
    allow_nonfinite: bool
    ckpt_dir: str
    ckpt_interval: int
    ckpt_save_interval: int
    ckpt_save_policy: Optional[str]
    keep_checkpoint_max: int
    resume: str
    log_interval: int
    val_while_train: bool
    val_interval: int


_GROUPS = {"data": DataOptions, "model": ModelOptions, "optim": OptimOptions, "run": RunOptions}


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Every option of a ``train.py`` run, in its groups."""
    data: DataOptions
    model: ModelOptions
    optim: OptimOptions
    run: RunOptions

    @classmethod
    def from_namespace(cls, args):
        """The groups of a parsed (and checked) argparse Namespace."""
        return cls(**{name: group.of(args) for name, group in _GROUPS.items()})

    def as_dict(self):
        """``{option: value}`` over every group: a flat recipe, as ``train.py -c`` reads it."""
        return {key: value for name in _GROUPS for key, value in dataclasses.asdict(getattr(self, name)).items()}
