"""slab_ms.data.digit_scenes: deterministic digit scenes with boxes (the ablation's data, the detection demo's)."""
import numpy as np
import pytest

from slab_ms.data import digit_glyphs, digit_scenes


def test_same_arguments_give_the_same_scenes_and_seeds_differ():
    a = digit_scenes(12, seed=3, distractors=2)
    b = digit_scenes(12, seed=3, distractors=2)
    c = digit_scenes(12, seed=4, distractors=2)
    assert a.images.dtype == np.float32 and a.images.shape == (12, 64, 64)
    assert np.array_equal(a.images, b.images)
    assert all(np.array_equal(x, y) for x, y in zip(a.boxes, b.boxes))
    assert all(np.array_equal(x, y) for x, y in zip(a.labels, b.labels))
    assert not np.array_equal(a.images, c.images)


def test_train_and_val_never_share_a_glyph():
    from sklearn.datasets import load_digits
    target = load_digits().target
    _, train_labels, train_idx = digit_glyphs("train")
    _, val_labels, val_idx = digit_glyphs("val")
    assert len(train_idx) == 1433 and len(val_idx) == 364 and not set(train_idx) & set(val_idx)
    assert np.array_equal(target[train_idx], train_labels) and np.array_equal(target[val_idx], val_labels)
    for split, allowed in (("train", set(train_idx)), ("val", set(val_idx))):
        scenes = digit_scenes(40, digits_per_image=3, seed=0, split=split)
        used = np.concatenate(scenes.glyphs)
        assert set(used) <= allowed
        assert np.array_equal(np.concatenate(scenes.labels), target[used])
    with pytest.raises(ValueError, match="split"):
        digit_glyphs("test")


def test_boxes_are_tight_inside_the_canvas_and_cover_every_inked_pixel():
    single = digit_scenes(20, canvas_size=48, digits_per_image=1, scale_range=(1.5, 3.0), noise=0, seed=1)
    for image, boxes in zip(single.images, single.boxes):
        rows, cols = np.nonzero(image)
        assert boxes.shape == (1, 4)
        assert boxes[0].tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    many = digit_scenes(20, canvas_size=64, digits_per_image=(2, 4), noise=0, seed=2)
    for image, boxes, labels in zip(many.images, many.boxes, many.labels):
        assert 2 <= len(boxes) == len(labels) <= 4
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        covered = np.zeros(image.shape, bool)
        for x1, y1, x2, y2 in boxes.astype(int):
            covered[y1:y2, x1:x2] = True
        assert not (image > 0)[~covered].any()


def test_noise_and_distractors_stay_in_range():
    clean = digit_scenes(6, noise=0, seed=5)
    noisy = digit_scenes(6, noise=0.1, distractors=5, seed=5)
    assert noisy.images.min() >= 0 and noisy.images.max() <= 1
    assert (noisy.images > 0).mean() > 2 * (clean.images > 0).mean()
    with pytest.raises(ValueError, match="does not fit"):
        digit_scenes(1, canvas_size=12, scale_range=(2.0, 3.0))
    with pytest.raises(ValueError, match="does not fit"):
        digit_scenes(1, canvas_size=20, scale_range=(2.4, 2.5), rotation=45)
