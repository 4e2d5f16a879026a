"""Data: the ImageFolder loaders (``imagefolder``), scikit-learn's digits for the demos (``digits``: the split,
the demo's ImageFolder, the glyphs) and the digit scenes with boxes (``scenes``)."""
from .digits import DemoFolderError, digit_glyphs, prepare_demo_dataset
from .imagefolder import IMAGE_EXTENSIONS, BatchMixer, create_loaders, create_val_loader
from .scenes import DigitScenes, box_iou, digit_scenes

__all__ = ["create_loaders", "create_val_loader", "prepare_demo_dataset", "digit_glyphs", "digit_scenes",
           "DigitScenes", "box_iou", "BatchMixer", "IMAGE_EXTENSIONS", "DemoFolderError"]
