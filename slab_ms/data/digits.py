"""scikit-learn's 8x8 handwritten digits, the data of the demos: the train / val split of the images
(``digit_splits``), the ImageFolder the training demo reads (``prepare_demo_dataset``) and the glyphs of one
split (``digit_glyphs``, drawn into the digit scenes)."""
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

__all__ = ["prepare_demo_dataset", "digit_glyphs", "digit_splits", "load_digits", "DemoFolderError"]

DEMO_IMAGE_SIZE = 32
DEMO_VAL_EVERY = 5  # every 5th image of each digit (in load_digits() order) is validation: 364 val, 1433 train
_DEMO_MARKER = "digits_demo.txt"
_DEMO_DESCRIPTION = (f"scikit-learn load_digits(): 1797 images, 10 classes, 8x8 upsampled to "
                     f"{DEMO_IMAGE_SIZE}x{DEMO_IMAGE_SIZE} RGB PNG; "
                     f"val = every {DEMO_VAL_EVERY}th image of each digit\n")


class DemoFolderError(FileExistsError, ValueError):
    """``dataset: digits`` pointed at a folder that holds something else: bad input (exit status 2), and
    still the FileExistsError it always was for callers that catch that."""


def load_digits():
    """scikit-learn's ``load_digits()`` (a Bunch: ``images`` (1797, 8, 8) in 0..16, ``target``)."""
    try:
        from sklearn.datasets import load_digits as load
    except ImportError as err:
        raise ImportError("the digits demos need scikit-learn: pip install scikit-learn") from err
    return load()


def digit_splits(labels):
    """``"val"`` or ``"train"`` for each image of ``labels`` (in ``load_digits()`` order): every
    ``DEMO_VAL_EVERY``-th image of each digit is validation."""
    seen = np.zeros(10, dtype=int)
    splits = []
    for label in labels:
        splits.append("val" if seen[label] % DEMO_VAL_EVERY == 0 else "train")
        seen[label] += 1
    return splits


def prepare_demo_dataset(root):
    """Write the digits demo as ``root/{train,val}/<digit>/<index>.png`` once; return ``root``.

    Idempotent (a complete dataset is left as it is) and atomic (written to a temporary folder next to
    ``root``, then renamed), so concurrent callers and killed runs never see a partial dataset.
    """
    root = os.path.abspath(os.fspath(root))
    if _is_demo_dataset(root):
        return root
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise DemoFolderError(f"'{root}' exists but is not the digits demo dataset; remove it or choose "
                              f"another data_dir, or pass --dataset imagefolder to read it (nothing was overwritten).")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp", dir=parent)
    try:
        _write_digits(tmp)
        try:
            os.rename(tmp, root)  # replaces an empty folder; fails if another writer finished first
        except OSError:
            if not _is_demo_dataset(root):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return root


def _is_demo_dataset(root):
    marker = os.path.join(root, _DEMO_MARKER)
    if not os.path.isfile(marker):
        return False
    with open(marker, encoding="utf-8") as f:
        return f.read() == _DEMO_DESCRIPTION


def _write_digits(folder):
    digits = load_digits()
    for index, (pixels, label, split) in enumerate(zip(digits.images, digits.target, digit_splits(digits.target))):
        class_dir = os.path.join(folder, split, str(label))
        os.makedirs(class_dir, exist_ok=True)
        gray = Image.fromarray(np.round(pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")
        gray = gray.resize((DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE), Image.BILINEAR)
        gray.convert("RGB").save(os.path.join(class_dir, f"{index:04d}.png"))
    with open(os.path.join(folder, _DEMO_MARKER), "w", encoding="utf-8") as f:
        f.write(_DEMO_DESCRIPTION)


def digit_glyphs(split):
    """``(glyphs, labels, indices)`` of one split (``digit_splits``) of scikit-learn's ``load_digits()``.

    ``glyphs`` float32 (n, 8, 8) in [0, 1]; ``indices`` the positions in ``load_digits()``. The split is the
    demo's, so train and val never share a glyph.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    digits = load_digits()
    keep = np.asarray([index for index, s in enumerate(digit_splits(digits.target)) if s == split], np.int64)
    return (digits.images[keep] / 16.0).astype(np.float32), digits.target[keep].astype(np.int64), keep
