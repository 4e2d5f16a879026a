"""MindCV's recipe keys in a train.py recipe: a MindCV yaml (``configs/<family>/*_ascend.yaml``) trains here.

Keys that mean the same under another name are renamed; keys whose value is a MindCV default with no effect
here are dropped; a MindCV setting this trainer does not have is refused by name, with what to use instead.
"""
import argparse

__all__ = ["translate_mindcv_keys", "add_mindcv_aliases"]

RENAMED = {
    "epoch_size": "epochs",
    "image_resize": "image_size",
    "ckpt_save_dir": "ckpt_dir",
    "ckpt_path": "ckpt_file",
    "gradient_accumulation_steps": "accumulate_steps",
    "cutmix_prob": "mixup_prob",  # MindCV's probability of mixing a batch (mixup or cutmix)
}
# MindCV key -> the values that mean what train.py does anyway (the key is then dropped).
NO_EFFECT = {
    "dataset_download": (False,),
    "pretrained": (False,),
    "resume_opt": (False,),
    "num_samples": (None,),
    "vflip": (0, 0.0),
    "aug_splits": (0,),
    "aug_repeats": (0,),
    "use_nesterov": (False,),
    "lr_epoch_stair": (False,),
    "eval_shuffle": (False,),
    "layer_decay": (None,),
    "reduction": ("mean",),
    "aux_factor": (0, 0.0),
    "num_cycles": (1,),
    "cycle_decay": (1, 1.0),
    "in_channels": (3,),
    "weight_decay_filter": ("norm_and_bias",),  # train.py never decays 1-D parameters (norms) and biases
}
INSTEAD = {
    "weight_decay_filter": "train.py excludes 1-D parameters and biases from weight decay (MindCV's norm_and_bias)",
}


def add_mindcv_aliases(parser):
    """MindCV's names of options (``--epoch_size`` for ``--epochs``, ...) on the command line too."""
    actions = {opt: a for a in parser._actions for opt in a.option_strings}  # pylint: disable=protected-access
    for mindcv, ours in RENAMED.items():
        action = actions.get(f"--{ours}")
        if action is not None and f"--{mindcv}" not in actions:
            parser.add_argument(f"--{mindcv}", dest=action.dest, type=action.type, nargs=action.nargs,
                                choices=action.choices, default=argparse.SUPPRESS, help=f"MindCV's name of --{ours}")
    return parser


def translate_mindcv_keys(recipe, options, path):
    """``recipe`` with MindCV's keys turned into train.py's; ``options`` are train.py's key names. Returns
    ``(recipe, refused)``: refused is a list of one-line reasons (empty when everything translated)."""
    out, refused = {}, []
    for key, value in recipe.items():
        if key in options:
            out[key] = value
        elif key in RENAMED:
            out[RENAMED[key]] = value
        elif key in NO_EFFECT:
            if value not in NO_EFFECT[key]:
                instead = INSTEAD.get(key, f"remove it or set {NO_EFFECT[key][0]!r}")
                refused.append(f"'{key}: {value}' (MindCV) has no equivalent here: {instead}")
        elif key == "val_amp_level":  # validation runs the trained network at its own amp_level
            if value != recipe.get("amp_level", "O0"):
                refused.append(f"'val_amp_level: {value}' (MindCV): train.py validates the trained network at its "
                               f"amp_level ({recipe.get('amp_level', 'O0')}); remove val_amp_level or set it equal")
        elif key == "clip_value":
            continue  # read with clip_grad below
        elif key == "warmup_factor":
            out["warmup_lr"] = float(value) * float(recipe.get("lr", 0.0))
        elif key == "decay_epochs":
            epochs = recipe.get("epoch_size", recipe.get("epochs"))
            warmup = recipe.get("warmup_epochs", 0)
            if epochs is not None and int(value) != int(epochs) - int(warmup):
                refused.append(f"'decay_epochs: {value}' (MindCV): train.py decays over epochs - warmup_epochs "
                               f"({int(epochs) - int(warmup)}); set epochs / warmup_epochs to match")
        else:
            out[key] = value  # unknown to both: train.py's unknown-key error names it
    if isinstance(out.get("clip_grad"), bool):  # MindCV: clip_grad on/off, clip_value the max norm
        out["clip_grad"] = float(recipe.get("clip_value", 15.0)) if out["clip_grad"] else None
    if str(out.get("dataset", "")).lower() == "imagenet":
        out["dataset"] = "imagefolder"  # MindCV's imagenet reads <data_dir>/train|val/<class>/<image>
    jitter = out.get("color_jitter")
    if isinstance(jitter, (list, tuple)):
        if len(set(jitter)) != 1:
            refused.append(f"'color_jitter: {jitter}': train.py takes one strength for brightness, contrast and "
                           "saturation")
        else:
            out["color_jitter"] = jitter[0]
    return out, [f"{path}: {reason}" for reason in refused]
