"""Training for SLAB models: ``train.py``'s recipe parser, compiled train step, γ schedule, checkpoints."""
from .callbacks import GammaDecay, ProgressLogger
from .config import ConfigError, build_parser, parse_args, parse_options
from .loop import NonFiniteLossError, Trainer, train
from .options import DataOptions, ModelOptions, OptimOptions, RunOptions, TrainOptions
from .train_step import NetWithLoss, TrainStep, build_optimizer, param_groups

__all__ = ["ConfigError", "GammaDecay", "NetWithLoss", "NonFiniteLossError", "ProgressLogger", "TrainStep",
           "Trainer", "build_optimizer", "build_parser", "param_groups", "parse_args", "parse_options", "train",
           "TrainOptions", "DataOptions", "ModelOptions", "OptimOptions", "RunOptions"]
