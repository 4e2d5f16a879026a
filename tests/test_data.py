"""slab_ms.data: the digits demo writer, the ImageFolder checks and the loader contract train.py relies on."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from slab_ms import data
from slab_ms.data import create_loaders, create_val_loader, prepare_demo_dataset
from slab_ms.training import DataOptions
from slab_ms.training.config import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_args(data_dir, *extra):
    """The data options of a train.py command line."""
    return DataOptions.of(build_parser().parse_args(["--data_dir", str(data_dir), "--image_size", "16",
                                                     "--batch_size", "4", "--num_parallel_workers", "1", *extra]))


def write_image_folder(root, classes=("ant", "bee", "cat"), per_class=(8, 8, 8), val_per_class=2, ext=".png"):
    rng = np.random.default_rng(0)
    for split, counts in (("train", per_class), ("val", (val_per_class,) * len(classes))):
        for name, count in zip(classes, counts):
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}{ext}", format=ext.strip(".").upper()
                                             .replace("JPG", "JPEG"))
    return root


@pytest.fixture(autouse=True)
def fresh_check_cache():
    data.imagefolder._checked_splits.clear()
    yield


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return prepare_demo_dataset(tmp_path_factory.mktemp("demo") / "digits")


def test_demo_dataset_counts(demo_root):
    counts = {split: {c: len(os.listdir(os.path.join(demo_root, split, c)))
                      for c in os.listdir(os.path.join(demo_root, split))} for split in ("train", "val")}
    assert sorted(counts["train"]) == sorted(counts["val"]) == [str(d) for d in range(10)]
    assert sum(counts["train"].values()) == 1433 and sum(counts["val"].values()) == 364
    assert counts["val"]["8"] == 35 and counts["train"]["8"] == 139  # stratified: every 5th image of a digit
    with Image.open(os.path.join(demo_root, "val", "3", os.listdir(os.path.join(demo_root, "val", "3"))[0])) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    assert not [n for n in os.listdir(os.path.dirname(demo_root)) if n.startswith(".")]  # no temp folder left


def test_demo_dataset_is_written_once(demo_root):
    marker = os.path.join(demo_root, data.digits._DEMO_MARKER)
    image = os.path.join(demo_root, "train", "0", sorted(os.listdir(os.path.join(demo_root, "train", "0")))[0])
    before = (os.stat(marker).st_mtime_ns, os.stat(image).st_mtime_ns)
    assert prepare_demo_dataset(demo_root) == demo_root
    assert (os.stat(marker).st_mtime_ns, os.stat(image).st_mtime_ns) == before


def test_demo_dataset_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not the digits demo"):
        prepare_demo_dataset(tmp_path / "mine")
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_digits_dataset_key_reads_demo(demo_root):
    args = make_args(demo_root, "--dataset", "digits", "--image_size", "32", "--batch_size", "64")
    train, val, num_classes, steps = create_loaders(args)
    assert (num_classes, steps, val.get_dataset_size()) == (10, 1433 // 64, 6)  # 364 val images, batch 64
    x, y = next(val.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert x.shape == (64, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int32


def test_missing_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*--data_dir"):
        create_loaders(make_args(tmp_path / "nowhere"))


def test_missing_val_split(tmp_path):
    root = write_image_folder(tmp_path)
    os.rename(root / "val", root / "validation")
    with pytest.raises(FileNotFoundError, match="no val split.*--val_split ''"):
        create_loaders(make_args(root))
    _, val, _, _ = create_loaders(make_args(root, "--val_split", ""))
    assert val is None


def test_empty_class_folder(tmp_path):
    root = write_image_folder(tmp_path)
    os.makedirs(root / "train" / "dog")
    (root / "train" / "dog" / "readme.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"1 class folder\(s\) in '.*train' contain no images \(dog\)"):
        create_loaders(make_args(root))


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated"])
def test_corrupt_image_fails_with_file_name(tmp_path, damage):
    root = write_image_folder(tmp_path)
    bad = root / "train" / "bee" / "3.png"
    content = bad.read_bytes()
    bad.write_bytes({"garbage": b"this is no png" * 20, "empty": b"", "truncated": content[:len(content) // 2]}[damage])
    with pytest.raises(ValueError, match=r"1 corrupt or unreadable image file\(s\).*bee/3\.png.*--check_images"):
        create_loaders(make_args(root))


@pytest.mark.parametrize("kind", ["fifo", "dangling symlink", "symlink to /dev/zero"])
def test_an_image_name_that_is_not_a_regular_file_is_refused_by_name(tmp_path, kind):
    """Checked even with --check_images False: MindSpore's reader would block on a FIFO forever and fail
    mid-run on the others."""
    root = write_image_folder(tmp_path)
    special = root / "train" / "bee" / "x.png"
    {"fifo": lambda: os.mkfifo(special), "dangling symlink": lambda: os.symlink(tmp_path / "gone.png", special),
     "symlink to /dev/zero": lambda: os.symlink("/dev/zero", special)}[kind]()
    os.symlink(root / "train" / "bee" / "0.png", root / "train" / "bee" / "link.png")  # a link to an image is fine
    with pytest.raises(ValueError, match=r"1 image name\(s\) in '.*train' are not regular files .*bee/x\.png\. "):
        create_loaders(make_args(root, "--check_images", "False"))


def test_val_class_unknown_to_train(tmp_path):
    root = write_image_folder(tmp_path)
    os.rename(root / "val" / "cat", root / "val" / "cow")
    with pytest.raises(ValueError, match="val classes not in the train split: cow"):
        create_loaders(make_args(root))


def test_val_split_with_fewer_classes_keeps_train_indices(tmp_path):
    root = write_image_folder(tmp_path)
    for name in os.listdir(root / "val" / "ant"):
        os.remove(root / "val" / "ant" / name)
    os.rmdir(root / "val" / "ant")
    val, num_classes = create_val_loader(make_args(root))
    labels = np.concatenate([y for _, y in val.create_tuple_iterator(num_epochs=1, output_numpy=True)])
    assert num_classes == 3 and sorted(labels.tolist()) == [1, 1, 2, 2]  # bee=1, cat=2 as in train


def test_uppercase_extensions_are_read(tmp_path):
    root = write_image_folder(tmp_path, per_class=(5, 6, 7), ext=".JPEG")
    train, _, _, steps = create_loaders(make_args(root, "--drop_remainder", "False", "--shuffle", "False"))
    labels = np.concatenate([y for _, y in train.create_tuple_iterator(num_epochs=1, output_numpy=True)])
    assert steps == 5 and np.bincount(labels).tolist() == [5, 6, 7]


def epoch_batches(args, epoch=0, rank_id=None, rank_size=None):
    train, _, _, steps = create_loaders(args, 0, epoch, rank_id, rank_size)
    batches = list(train.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert len(batches) == steps
    return batches


def digest(batches):
    return hashlib.md5(b"".join(x.tobytes() + y.tobytes() for x, y in batches)).hexdigest()


def test_epoch_is_reproducible_with_augmentation_and_mixup(tmp_path):
    """Same (seed, epoch) -> the same batches, bit for bit (one worker), as an exact resume needs."""
    root = write_image_folder(tmp_path)
    extra = ["--mixup", "0.8", "--cutmix", "1.0", "--re_prob", "0.25", "--auto_augment", "randaug-m9-mstd0.5-inc1"]
    args = make_args(root, *extra)
    first = epoch_batches(args, 3)
    _, y = first[0]
    assert y.shape == (4, 3) and y.dtype == np.float32 and np.allclose(y.sum(axis=1), 1.0)
    np.random.seed(123)  # the caller's RNG state in between must not matter
    assert digest(epoch_batches(args, 3)) == digest(first)
    assert digest(epoch_batches(args, 4)) != digest(first)


def test_ranks_shard_one_permutation(tmp_path):
    root = write_image_folder(tmp_path, per_class=(8, 8, 8))
    args = make_args(root, "--image_size", "20", "--crop_pct", "1.0", "--scale", "1", "1", "--ratio", "1", "1",
                     "--hflip", "0", "--interpolation", "nearest")
    image_ids = []
    for rank in (0, 1):
        batches = epoch_batches(args, 0, rank, 2)
        assert len(batches) == 3  # 24 images / 2 ranks / batch 4
        image_ids.append({x.tobytes() for xb, _ in batches for x in xb})
    assert len(image_ids[0]) == len(image_ids[1]) == 12 and not image_ids[0] & image_ids[1]


def test_train_py_stops_on_a_corrupt_image_before_writing(tmp_path):
    root = write_image_folder(tmp_path / "data")
    (root / "val" / "cat" / "1.png").write_bytes(b"\x89PNG broken")
    ckpt_dir = tmp_path / "ckpt"
    result = subprocess.run([sys.executable, "train.py", "--model", "slab_deit_tiny", "--data_dir", str(root),
                             "--ckpt_dir", str(ckpt_dir)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("train.py: error: 1 corrupt or unreadable image file(s)")
    assert "cat/1.png" in result.stderr and not ckpt_dir.exists()


def test_train_py_refuses_a_fifo_image_before_the_run_starts(tmp_path):
    root = write_image_folder(tmp_path / "data")
    os.mkfifo(root / "train" / "ant" / "pipe.png")
    ckpt_dir = tmp_path / "ckpt"
    result = subprocess.run([sys.executable, "train.py", "--model", "slab_deit_tiny", "--data_dir", str(root),
                             "--check_images", "False", "--ckpt_dir", str(ckpt_dir)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("train.py: error: 1 image name(s)")
    assert "ant/pipe.png" in result.stderr and "Traceback" not in result.stderr and not ckpt_dir.exists()
