"""Every checkpoint format: strict MindSpore ``.ckpt`` loading and atomic writing, official PyTorch ``.pth`` /
``.npz`` reading and conversion, and ``train.py``'s resumable train-state checkpoints."""
from .checkpoint import checkpoint_num_classes, load_checkpoint, save_checkpoint
from .official import convert_state_dict, load_official_checkpoint, read_state_dict
from .strict import is_excluded, mismatch_message

__all__ = ["load_checkpoint", "save_checkpoint", "checkpoint_num_classes", "convert_state_dict",
           "load_official_checkpoint", "read_state_dict", "is_excluded", "mismatch_message"]
