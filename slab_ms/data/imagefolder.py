"""MindCV ImageFolder loaders: the checks of a data folder, the train / val loaders, batch Mixup / CutMix.

Layout (``dataset: imagefolder``)::

    data_dir/train/<class>/<image>      data_dir/val/<class>/<image>

Classes are the folder names of the train split, indexed in sorted order; the val split uses the same
indices (it may lack a class, but a val class unknown to train is an error). Images are the files with
the extensions in ``IMAGE_EXTENSIONS`` (any case); other files are ignored. An image name that is not a
regular file (a FIFO, a device, a socket, a dangling symlink) is refused by name, whatever ``check_images``
says: the loader would block on it or fail mid-run.

``dataset: digits`` is the embedded demo: scikit-learn's 8x8 handwritten digits written once to
``data_dir`` as such an ImageFolder (``digits.prepare_demo_dataset``), then read like any other.

Bad data is one clear error before anything is built (``FileNotFoundError`` / ``ValueError``): a missing
data folder or split, a class folder without images, and a corrupt image file. Corrupt files FAIL the run
(listing them) rather than being skipped: MindSpore's ImageFolder reader cannot leave single files out,
and a silently smaller dataset hides broken data. The check (``check_images``, PIL open + verify of every
file, once per process) catches non-image, empty and truncated-PNG files; a JPEG truncated inside its scan
data may still pass and is then left to the decoder.

Exact resume: ``create_loaders`` is called once per epoch with its ``epoch`` and reseeds the dataset engine
(and Python's / numpy's global RNGs, which MindCV's RandAugment draws from) with a seed derived from
``(seed, epoch)``, the same on every rank so that the distributed sampler shards one permutation. The
sample order of an epoch is therefore the same in any process; random augmentation and mixup / cutmix
are too, but only with ``num_parallel_workers: 1`` (with more workers MindSpore's random transforms are
not reproducible). Mixup / CutMix is ``BatchMixer`` rather than MindCV's ``Mixup``: that one draws from
numpy's global RNG in a different pipeline thread than RandAugment, so the two interleave differently
from run to run.
"""
import concurrent.futures
import os
import stat

import numpy as np
import mindspore.dataset as ds
from mindspore.dataset.vision import Inter
from mindcv.data import create_dataset, create_loader, create_transforms
from PIL import Image

from .digits import prepare_demo_dataset

__all__ = ["create_loaders", "create_val_loader", "check_split", "image_files", "BatchMixer", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
IMAGE_FOLDER_NAMES = ("imagefolder", "imagenet", "digits")

_checked_splits = {}  # split folder -> (class names, file extensions, images verified); once per process


# ------------------------------------------------------------------------------------- folder checks

def _data_root(data):
    dataset = (data.dataset or "imagefolder").lower()
    if dataset not in IMAGE_FOLDER_NAMES:
        raise ValueError(f"dataset '{data.dataset}' is not supported: use 'imagefolder' (data_dir/train/<class>/"
                         f"<image>, data_dir/val/...) or 'digits' (the embedded demo).")
    if not data.data_dir:
        raise ValueError("no data_dir: set 'data_dir' in the recipe or pass --data_dir PATH.")
    if dataset == "digits":
        return prepare_demo_dataset(data.data_dir)
    root = os.path.abspath(data.data_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data_dir '{data.data_dir}' does not exist. Point --data_dir at a folder with "
                                f"{data.train_split}/<class>/<image> (and {data.val_split or 'val'}/...), "
                                f"or use --dataset digits for the embedded demo.")
    return root


def image_files(class_dir):
    """Every entry of ``class_dir`` with an image extension that is not a folder (regular or not)."""
    return sorted(entry.path for entry in os.scandir(class_dir)
                  if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and not entry.is_dir())


def _is_regular_file(path):
    """True for a regular file or a symlink to one (``os.stat`` follows links; a dangling one raises)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _is_readable_image(path):
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... for broken files
        return False


def check_split(root, split, check_images, role):
    """Class names and file extensions of one split; raises on anything the loader would trip over."""
    split_dir = os.path.join(root, split)
    cached = _checked_splits.get(split_dir)
    if cached and (cached[2] or not check_images):
        return cached[:2]
    if not os.path.isdir(split_dir):
        hint = " or pass --val_split '' to train without validation" if role == "val" else ""
        raise FileNotFoundError(f"no {role} split: '{split_dir}' does not exist. Expected {split_dir}/<class>/"
                                f"<image>{hint}.")
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise ValueError(f"'{split_dir}' has no class folders; expected {split_dir}/<class>/<image>.")
    files = {name: image_files(os.path.join(split_dir, name)) for name in classes}
    empty = [name for name in classes if not files[name]]
    if empty:
        raise ValueError(f"{len(empty)} class folder(s) in '{split_dir}' contain no images ({', '.join(empty[:10])}"
                         f"{' ...' if len(empty) > 10 else ''}); add images ({'/'.join(IMAGE_EXTENSIONS)}) "
                         f"or remove the folder(s).")
    all_files = [path for name in classes for path in files[name]]
    special = [path for path in all_files if not _is_regular_file(path)]
    if special:
        raise ValueError(f"{len(special)} image name(s) in '{split_dir}' are not regular files (a FIFO, device, socket "
                         f"or dangling symlink the loader would block on or fail at): {', '.join(special[:10])}"
                         f"{' ...' if len(special) > 10 else ''}. Remove them or point them at image files.")
    if check_images:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            readable = list(pool.map(_is_readable_image, all_files, chunksize=256))
        corrupt = [path for path, ok in zip(all_files, readable) if not ok]
        if corrupt:
            raise ValueError(f"{len(corrupt)} corrupt or unreadable image file(s) in '{split_dir}': "
                             f"{', '.join(corrupt[:10])}{' ...' if len(corrupt) > 10 else ''}. Delete or "
                             f"replace them (or pass --check_images False to skip this check).")
    extensions = sorted({os.path.splitext(path)[1] for path in all_files})
    _checked_splits[split_dir] = (classes, extensions, check_images)
    return classes, extensions


# ------------------------------------------------------------------------------------------ loaders

class BatchMixer:
    """Mixup / CutMix of a whole batch with its reverse (timm's "batch" mode, the paper's recipe).

    With probability ``prob`` a batch is mixed: by CutMix with probability ``switch_prob`` when both are
    enabled, else Mixup; λ ~ Beta(α, α); CutMix pastes a box of area 1-λ (clipped at the border) and
    λ is corrected to the pasted area. Labels become soft targets (B, num_classes); label smoothing is
    left to the loss. Owns its random generator, so a seeded mixer repeats its draws exactly.
    """

    def __init__(self, mixup_alpha, cutmix_alpha, prob, num_classes, seed, switch_prob=0.5):
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.num_classes = prob, switch_prob, num_classes
        self.rng = np.random.default_rng(seed)

    def __call__(self, images, labels):
        targets = np.eye(self.num_classes, dtype=np.float32)[labels]
        if self.rng.random() >= self.prob:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or self.rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(self.rng.beta(alpha, alpha))
        partner = images[::-1]
        if use_cutmix:
            height, width = images.shape[-2:]
            half_h, half_w = int(height * np.sqrt(1.0 - lam)) // 2, int(width * np.sqrt(1.0 - lam)) // 2
            cy, cx = self.rng.integers(height), self.rng.integers(width)
            top, bottom = max(cy - half_h, 0), min(cy + half_h, height)
            left, right = max(cx - half_w, 0), min(cx + half_w, width)
            images = images.copy()
            images[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        else:
            images = (images * lam + partner * (1.0 - lam)).astype(np.float32)
        return images, (targets * lam + targets[::-1] * (1.0 - lam)).astype(np.float32)


def _epoch_seed(seed, epoch):
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _num_workers(data):
    return max(1, min(data.num_parallel_workers, os.cpu_count() or 1))


def _interpolation(data):
    if not hasattr(Inter, data.interpolation.upper()):
        raise ValueError(f"unknown interpolation '{data.interpolation}'; use bilinear, bicubic, nearest, ...")
    return data.interpolation


def _image_folder(root, split, classes, extensions, shuffle, workers, rank_id=None, rank_size=None):
    sharded = rank_size is not None and rank_size > 1
    return create_dataset("", root=root, split=split, shuffle=shuffle, num_parallel_workers=workers,
                          num_shards=rank_size if sharded else None, shard_id=rank_id if sharded else None,
                          class_indexing={name: index for index, name in enumerate(classes)},
                          extensions=extensions)


def _eval_loader(data, root, split, classes, extensions):
    transform = create_transforms("", image_resize=data.image_size, is_training=False, crop_pct=data.crop_pct,
                                  interpolation=_interpolation(data), mean=data.mean, std=data.std)
    dataset = _image_folder(root, split, classes, extensions, shuffle=False, workers=_num_workers(data))
    return create_loader(dataset, batch_size=data.val_batch_size or data.batch_size, drop_remainder=False,
                         is_training=False, transform=transform, num_parallel_workers=_num_workers(data))


def create_loaders(data, seed=0, epoch=0, rank_id=None, rank_size=None, mix=True):
    """``(train_loader, val_loader or None, num_classes, steps_per_epoch)`` of ``data`` (``DataOptions``) for
    ``epoch`` of a run seeded with ``seed``; ``mix=False`` leaves Mixup / CutMix out (BN re-calibration).

    The train loader holds this rank's shard of one epoch (iterate it with ``num_epochs=1``): images
    float32 NCHW, labels int32 ``(B,)``, or float32 ``(B, num_classes)`` with mixup / cutmix. The val
    loader holds the whole val split on every rank (exact accuracy without padding); None when
    ``val_split`` is empty.
    """
    root = _data_root(data)
    check_images = data.check_images
    classes, extensions = check_split(root, data.train_split, check_images, "train")
    num_classes = len(classes)
    val_loader = None
    if data.val_split:
        val_classes, val_extensions = check_split(root, data.val_split, check_images, "val")
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise ValueError(f"val classes not in the train split: {', '.join(unknown[:10])}. Both splits "
                             f"must use the same class folder names.")
        val_loader = _eval_loader(data, root, data.val_split, classes, val_extensions)

    epoch_seed = _epoch_seed(seed, epoch)
    ds.config.set_seed(epoch_seed)
    workers = _num_workers(data)
    dataset = _image_folder(root, data.train_split, classes, extensions, data.shuffle, workers, rank_id, rank_size)
    shard_size = dataset.get_dataset_size()
    transform = create_transforms("", image_resize=data.image_size, is_training=True,
                                  auto_augment=data.auto_augment, scale=tuple(data.scale), ratio=tuple(data.ratio),
                                  hflip=data.hflip, color_jitter=data.color_jitter,
                                  interpolation=_interpolation(data), mean=data.mean, std=data.std,
                                  re_prob=data.re_prob, re_value=data.re_value)
    train_loader = create_loader(dataset, batch_size=data.batch_size, drop_remainder=data.drop_remainder,
                                 is_training=True, transform=transform, num_parallel_workers=workers)
    if mix and (data.mixup > 0 or data.cutmix > 0):  # one worker: the mixer's draws follow the batch order
        mixer = BatchMixer(data.mixup, data.cutmix, data.mixup_prob, num_classes, seed=[epoch_seed, rank_id or 0])
        train_loader = train_loader.map(mixer, input_columns=["image", "label"], num_parallel_workers=1)
    steps_per_epoch = train_loader.get_dataset_size()
    if steps_per_epoch == 0:
        raise ValueError(f"the train split gives {shard_size} images per device, fewer than batch_size "
                         f"{data.batch_size}: lower batch_size (or set drop_remainder False).")
    return train_loader, val_loader, num_classes, steps_per_epoch


def create_val_loader(data):
    """``(val_loader, num_classes)``: the val split of ``data`` (``DataOptions``) for ``validate.py``, classes
    indexed as in training."""
    if not data.val_split:
        raise ValueError("no val split: set --val_split (the folder under data_dir to evaluate).")
    root = _data_root(data)
    check_images = data.check_images
    train_dir = os.path.join(root, data.train_split)
    if os.path.isdir(train_dir):
        classes, _ = check_split(root, data.train_split, False, "train")
    else:  # an evaluation-only copy of the data: class indices from the val folders themselves
        classes = None
    val_classes, extensions = check_split(root, data.val_split, check_images, "val")
    classes = classes or val_classes
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise ValueError(f"val classes not in the train split: {', '.join(unknown[:10])}.")
    return _eval_loader(data, root, data.val_split, classes, extensions), len(classes)
