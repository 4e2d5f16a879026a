"""Data: MindCV ImageFolder loaders and the embedded digits demo dataset.

Layout (``dataset: imagefolder``)::

    data_dir/train/<class>/<image>      data_dir/val/<class>/<image>

Classes are the folder names of the train split, indexed in sorted order; the val split uses the same
indices (it may lack a class, but a val class unknown to train is an error). Images are the files with
the extensions in ``IMAGE_EXTENSIONS`` (any case); other files are ignored. An image name that is not a
regular file (a FIFO, a device, a socket, a dangling symlink) is refused by name, whatever ``check_images``
says: the loader would block on it or fail mid-run.

``dataset: digits`` is the embedded demo: scikit-learn's 8x8 handwritten digits written once to
``data_dir`` as such an ImageFolder (``prepare_demo_dataset``), then read like any other.

Bad data is one clear error before anything is built (``FileNotFoundError`` / ``ValueError``): a missing
data folder or split, a class folder without images, and a corrupt image file. Corrupt files FAIL the run
(listing them) rather than being skipped: MindSpore's ImageFolder reader cannot leave single files out,
and a silently smaller dataset hides broken data. The check (``check_images``, PIL open + verify of every
file, once per process) catches non-image, empty and truncated-PNG files; a JPEG truncated inside its scan
data may still pass and is then left to the decoder.

Exact resume: ``create_loaders`` is called once per epoch with ``args.epoch`` and reseeds the dataset engine
(and Python's / numpy's global RNGs, which MindCV's RandAugment draws from) with a seed derived from
``(seed, epoch)``, the same on every rank so that the distributed sampler shards one permutation. The
sample order of an epoch is therefore the same in any process; random augmentation and mixup / cutmix
are too, but only with ``num_parallel_workers: 1`` (with more workers MindSpore's random transforms are
not reproducible). Mixup / CutMix is ``BatchMixer`` rather than MindCV's ``Mixup``: that one draws from
numpy's global RNG in a different pipeline thread than RandAugment, so the two interleave differently
from run to run.
"""
import collections
import concurrent.futures
import os
import shutil
import stat
import tempfile

import numpy as np
import mindspore.dataset as ds
from mindspore.dataset.vision import Inter
from mindcv.data import create_dataset, create_loader, create_transforms
from PIL import Image

__all__ = ["create_loaders", "create_val_loader", "prepare_demo_dataset", "digit_glyphs", "digit_scenes",
           "DigitScenes", "BatchMixer", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
IMAGE_FOLDER_NAMES = ("imagefolder", "imagenet", "digits")

DEMO_IMAGE_SIZE = 32
DEMO_VAL_EVERY = 5  # every 5th image of each digit (in load_digits() order) is validation: 364 val, 1433 train
_DEMO_MARKER = "digits_demo.txt"
_DEMO_DESCRIPTION = (f"scikit-learn load_digits(): 1797 images, 10 classes, 8x8 upsampled to "
                     f"{DEMO_IMAGE_SIZE}x{DEMO_IMAGE_SIZE} RGB PNG; val = every {DEMO_VAL_EVERY}th image of each digit\n")



class DemoFolderError(FileExistsError, ValueError):
    """``dataset: digits`` pointed at a folder that holds something else: bad input (exit status 2), and
    still the FileExistsError it always was for callers that catch that."""


_checked_splits = {}  # split folder -> (class names, file extensions, images verified); once per process


# ----------------------------------------------------------------------------------------- demo data

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
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("The digits demo needs scikit-learn: pip install scikit-learn") from err
    digits = load_digits()
    seen = np.zeros(10, dtype=int)
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        split = "val" if seen[label] % DEMO_VAL_EVERY == 0 else "train"
        seen[label] += 1
        class_dir = os.path.join(folder, split, str(label))
        os.makedirs(class_dir, exist_ok=True)
        gray = Image.fromarray(np.round(pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")
        gray = gray.resize((DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE), Image.BILINEAR)
        gray.convert("RGB").save(os.path.join(class_dir, f"{index:04d}.png"))
    with open(os.path.join(folder, _DEMO_MARKER), "w", encoding="utf-8") as f:
        f.write(_DEMO_DESCRIPTION)


# ------------------------------------------------------------------------------------ digit scenes

DigitScenes = collections.namedtuple("DigitScenes", ["images", "boxes", "labels", "glyphs"])
DigitScenes.__doc__ = """``digit_scenes`` output: ``images`` float32 (N, S, S) in [0, 1]; per image ``boxes[i]``
float32 (k, 4) xyxy pixels, ``labels[i]`` int64 (k,) digits, ``glyphs[i]`` int64 (k,) load_digits indices."""


def digit_glyphs(split):
    """``(glyphs, labels, indices)`` of one split of scikit-learn's ``load_digits()``.

    ``glyphs`` float32 (n, 8, 8) in [0, 1]; ``indices`` the positions in ``load_digits()``. The split is the
    demo's: every ``DEMO_VAL_EVERY``-th image of each digit is ``"val"``, the rest ``"train"``, so the two
    never share a glyph.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("digit scenes need scikit-learn: pip install scikit-learn") from err
    digits = load_digits()
    seen = np.zeros(10, dtype=int)
    keep = []
    for index, label in enumerate(digits.target):
        if (seen[label] % DEMO_VAL_EVERY == 0) == (split == "val"):
            keep.append(index)
        seen[label] += 1
    keep = np.asarray(keep, dtype=np.int64)
    return (digits.images[keep] / 16.0).astype(np.float32), digits.target[keep].astype(np.int64), keep


def _render_glyph(canvas, glyph, matrix, center):
    """Draw ``glyph`` (8x8) onto ``canvas`` (max-composited) under ``canvas_point = matrix @ glyph_point +
    center`` (glyph points centred on the glyph); return the xyxy box of every pixel it inked, or None."""
    size = canvas.shape[0]
    corners = np.array([[-4, -4], [4, -4], [-4, 4], [4, 4]], dtype=np.float64) @ matrix.T + center
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 1, size)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    points = np.stack([xs + 0.5 - center[0], ys + 0.5 - center[1]], -1) @ np.linalg.inv(matrix).T
    u, v = points[..., 0] + 3.5, points[..., 1] + 3.5  # glyph pixel (col, row) coordinates of the centres
    padded = np.pad(glyph, 1)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    du, dv = u - u0, v - v0
    u0, v0 = np.clip(u0 + 1, 0, 9), np.clip(v0 + 1, 0, 9)
    u1, v1 = np.clip(u0 + 1, 0, 9), np.clip(v0 + 1, 0, 9)
    inside = (u > -1) & (u < 8) & (v > -1) & (v < 8)
    ink = ((padded[v0, u0] * (1 - du) + padded[v0, u1] * du) * (1 - dv)
           + (padded[v1, u0] * (1 - du) + padded[v1, u1] * du) * dv) * inside
    region = canvas[y0:y1, x0:x1]
    np.maximum(region, ink, out=region)
    rows, cols = np.nonzero(ink > 0)
    if rows.size == 0:
        return None
    return np.array([x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1], np.float32)


def _iou(box, boxes):
    if not boxes:
        return 0.0
    others = np.asarray(boxes)
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = w * h
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return float(np.max(inter / (area(box) + area(others) - inter)))


def digit_scenes(num_images, canvas_size=64, digits_per_image=(1, 3), scale_range=(2.0, 3.5), seed=0,
                 split="train", rotation=20.0, shear=0.2, noise=0.05, distractors=0, max_iou=0.1):
    """Deterministic scenes of scikit-learn's 8x8 digits on a larger canvas: images, boxes and labels.

    Each image is a black ``canvas_size`` square holding ``digits_per_image`` digits (an int, or an
    inclusive ``(min, max)`` range drawn per image), each glyph drawn under a random affine map: scale
    ``scale_range`` canvas pixels per glyph pixel (a digit is 8x that across), per-axis stretch 0.85-1.15,
    rotation uniform in +-``rotation`` degrees, shear uniform in +-``shear``, at a random position fully
    inside the canvas, overlapping earlier digits by at most IoU ``max_iou`` (best of 50 tries). Digits are
    max-composited; ``distractors`` random 3-5 pixel crops of other glyphs (unlabelled clutter, drawn
    under the same kind of map) go under them; Gaussian noise of std ``noise`` is added last, clipped to
    [0, 1]. A box is ``(x1, y1, x2, y2)`` in pixels, ``x2``/``y2`` exclusive: the tight box of every pixel
    its glyph inked before noise.

    ``split`` picks the glyphs (``digit_glyphs``: train and val never share one) and, with ``seed``, the
    random stream: the same arguments give the same scenes, bit for bit. Returns ``DigitScenes``.
    """
    if isinstance(digits_per_image, (int, np.integer)):
        digits_per_image = (int(digits_per_image), int(digits_per_image))
    low, high = digits_per_image
    if num_images < 0 or not 0 <= low <= high:
        raise ValueError(f"need num_images >= 0 and 0 <= min <= max digits_per_image, got {num_images}, "
                         f"{digits_per_image}")
    if not 0 < scale_range[0] <= scale_range[1] or 8 * scale_range[0] > canvas_size:
        raise ValueError(f"scale_range {scale_range} does not fit {canvas_size}-pixel canvases "
                         f"(a digit spans 8 x scale pixels)")
    glyphs, glyph_labels, glyph_indices = digit_glyphs(split)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0 if split == "train" else 1]))

    def random_matrix():
        scale = rng.uniform(*scale_range) * rng.uniform(0.85, 1.15, size=2)
        angle = np.deg2rad(rng.uniform(-rotation, rotation))
        rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        return rotate @ np.array([[1.0, rng.uniform(-shear, shear)], [0.0, 1.0]]) @ np.diag(scale)

    images = np.zeros((num_images, canvas_size, canvas_size), np.float32)
    all_boxes, all_labels, all_glyphs = [], [], []
    for image in images:
        for _ in range(distractors):
            crop_h, crop_w = rng.integers(3, 6, size=2)
            top, left = rng.integers(0, 9 - crop_h), rng.integers(0, 9 - crop_w)
            piece = np.zeros((8, 8), np.float32)
            piece[top:top + crop_h, left:left + crop_w] = glyphs[rng.integers(len(glyphs))][
                top:top + crop_h, left:left + crop_w]
            _render_glyph(image, piece, random_matrix(), rng.uniform(0, canvas_size, size=2))
        boxes, labels, chosen = [], [], []
        for _ in range(rng.integers(low, high + 1)):
            pick = int(rng.integers(len(glyphs)))
            best = None
            for _ in range(50):
                matrix = random_matrix()
                half = np.abs(matrix).sum(1) * 4  # half extent of the mapped 8x8 square, per axis
                if np.any(2 * half + 1 > canvas_size):
                    continue
                center = rng.uniform(half, canvas_size - half - 1)
                corners = np.concatenate([center - half, center + half])
                overlap = _iou(corners, boxes)
                if best is None or overlap < best[0]:
                    best = (overlap, matrix, center)
                if overlap <= max_iou:
                    break
            if best is None:
                raise ValueError(f"scale_range {scale_range} does not fit {canvas_size}-pixel canvases: 50 "
                                 f"random digits in a row were larger than the canvas")
            box = _render_glyph(image, glyphs[pick], best[1], best[2])
            if box is not None:
                boxes.append(box)
                labels.append(glyph_labels[pick])
                chosen.append(glyph_indices[pick])
        all_boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4))
        all_labels.append(np.asarray(labels, np.int64))
        all_glyphs.append(np.asarray(chosen, np.int64))
    if noise > 0:
        images += rng.normal(0.0, noise, images.shape).astype(np.float32)
        np.clip(images, 0.0, 1.0, out=images)
    return DigitScenes(images, all_boxes, all_labels, all_glyphs)


# ------------------------------------------------------------------------------------- folder checks

def _data_root(args):
    dataset = (args.dataset or "imagefolder").lower()
    if dataset not in IMAGE_FOLDER_NAMES:
        raise ValueError(f"dataset '{args.dataset}' is not supported: use 'imagefolder' (data_dir/train/<class>/"
                         f"<image>, data_dir/val/...) or 'digits' (the embedded demo).")
    if not args.data_dir:
        raise ValueError("no data_dir: set 'data_dir' in the recipe or pass --data_dir PATH.")
    if dataset == "digits":
        return prepare_demo_dataset(args.data_dir)
    root = os.path.abspath(args.data_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data_dir '{args.data_dir}' does not exist. Point --data_dir at a folder with "
                                f"{args.train_split}/<class>/<image> (and {args.val_split or 'val'}/...), "
                                f"or use --dataset digits for the embedded demo.")
    return root


def _image_files(class_dir):
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


def _check_split(root, split, check_images, role):
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
    files = {name: _image_files(os.path.join(split_dir, name)) for name in classes}
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


def _num_workers(args):
    return max(1, min(args.num_parallel_workers, os.cpu_count() or 1))


def _interpolation(args):
    if not hasattr(Inter, args.interpolation.upper()):
        raise ValueError(f"unknown interpolation '{args.interpolation}'; use bilinear, bicubic, nearest, ...")
    return args.interpolation


def _image_folder(root, split, classes, extensions, shuffle, workers, rank_id=None, rank_size=None):
    sharded = rank_size is not None and rank_size > 1
    return create_dataset("", root=root, split=split, shuffle=shuffle, num_parallel_workers=workers,
                          num_shards=rank_size if sharded else None, shard_id=rank_id if sharded else None,
                          class_indexing={name: index for index, name in enumerate(classes)},
                          extensions=extensions)


def _eval_loader(args, root, split, classes, extensions):
    transform = create_transforms("", image_resize=args.image_size, is_training=False, crop_pct=args.crop_pct,
                                  interpolation=_interpolation(args), mean=args.mean, std=args.std)
    dataset = _image_folder(root, split, classes, extensions, shuffle=False, workers=_num_workers(args))
    return create_loader(dataset, batch_size=args.val_batch_size or args.batch_size, drop_remainder=False,
                         is_training=False, transform=transform, num_parallel_workers=_num_workers(args))


def create_loaders(args, rank_id=None, rank_size=None):
    """``(train_loader, val_loader or None, num_classes, steps_per_epoch)`` for epoch ``args.epoch``.

    The train loader holds this rank's shard of one epoch (iterate it with ``num_epochs=1``): images
    float32 NCHW, labels int32 ``(B,)``, or float32 ``(B, num_classes)`` with mixup / cutmix. The val
    loader holds the whole val split on every rank (exact accuracy without padding); None when
    ``val_split`` is empty.
    """
    root = _data_root(args)
    check_images = getattr(args, "check_images", True)
    classes, extensions = _check_split(root, args.train_split, check_images, "train")
    num_classes = len(classes)
    val_loader = None
    if args.val_split:
        val_classes, val_extensions = _check_split(root, args.val_split, check_images, "val")
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise ValueError(f"val classes not in the train split: {', '.join(unknown[:10])}. Both splits "
                             f"must use the same class folder names.")
        val_loader = _eval_loader(args, root, args.val_split, classes, val_extensions)

    epoch_seed = _epoch_seed(args.seed, getattr(args, "epoch", 0))
    ds.config.set_seed(epoch_seed)
    workers = _num_workers(args)
    dataset = _image_folder(root, args.train_split, classes, extensions, args.shuffle, workers, rank_id, rank_size)
    shard_size = dataset.get_dataset_size()
    transform = create_transforms("", image_resize=args.image_size, is_training=True,
                                  auto_augment=args.auto_augment, scale=tuple(args.scale), ratio=tuple(args.ratio),
                                  hflip=args.hflip, color_jitter=args.color_jitter,
                                  interpolation=_interpolation(args), mean=args.mean, std=args.std,
                                  re_prob=args.re_prob, re_value=args.re_value)
    train_loader = create_loader(dataset, batch_size=args.batch_size, drop_remainder=args.drop_remainder,
                                 is_training=True, transform=transform, num_parallel_workers=workers)
    if args.mixup > 0 or args.cutmix > 0:  # one worker: the mixer's draws follow the batch order
        mixer = BatchMixer(args.mixup, args.cutmix, args.mixup_prob, num_classes, seed=[epoch_seed, rank_id or 0])
        train_loader = train_loader.map(mixer, input_columns=["image", "label"], num_parallel_workers=1)
    steps_per_epoch = train_loader.get_dataset_size()
    if steps_per_epoch == 0:
        raise ValueError(f"the train split gives {shard_size} images per device, fewer than batch_size "
                         f"{args.batch_size}: lower batch_size (or set drop_remainder False).")
    return train_loader, val_loader, num_classes, steps_per_epoch


def create_val_loader(args):
    """``(val_loader, num_classes)``: the val split for ``validate.py``, classes indexed as in training."""
    if not args.val_split:
        raise ValueError("no val split: set --val_split (the folder under data_dir to evaluate).")
    root = _data_root(args)
    check_images = getattr(args, "check_images", True)
    train_dir = os.path.join(root, args.train_split)
    if os.path.isdir(train_dir):
        classes, _ = _check_split(root, args.train_split, False, "train")
    else:  # an evaluation-only copy of the data: class indices from the val folders themselves
        classes = None
    val_classes, extensions = _check_split(root, args.val_split, check_images, "val")
    classes = classes or val_classes
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise ValueError(f"val classes not in the train split: {', '.join(unknown[:10])}.")
    return _eval_loader(args, root, args.val_split, classes, extensions), len(classes)
