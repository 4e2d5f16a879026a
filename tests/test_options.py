"""training.options: train.py's options as typed groups, each option in exactly one group, saved and read back."""
import dataclasses
import os

from slab_ms.training import DataOptions, ModelOptions, OptimOptions, RunOptions, parse_options
from slab_ms.training.config import build_parser
from slab_ms.training.outputs import save_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_RECIPE = os.path.join(ROOT, "configs", "demo", "slab_deit_demo.yaml")


def test_every_option_is_in_exactly_one_group():
    options = {a.dest for a in build_parser()._actions if a.dest not in ("help", "config")}
    fields = [f.name for group in (DataOptions, ModelOptions, OptimOptions, RunOptions)
              for f in dataclasses.fields(group)]
    assert sorted(fields) == sorted(options)


def test_the_saved_options_are_a_recipe_that_gives_the_same_options(tmp_path):
    options = parse_options(["-c", DEMO_RECIPE, "--lr", "0.003", "--val_batch_size", "7"])
    assert (options.optim.lr, options.data.val_batch_size, options.model.model) == (0.003, 7, "slab_deit_tiny")
    path = save_config(str(tmp_path / "run-config.yaml"), options)
    assert parse_options(["-c", path]) == options
