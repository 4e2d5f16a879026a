"""Scenes of scikit-learn's 8x8 digits on a larger canvas, with boxes and labels (the ablation's images, the
detection demo's), and the IoU of boxes (``box_iou``, also the detection metrics')."""
import collections

import numpy as np

from .digits import digit_glyphs

__all__ = ["digit_scenes", "DigitScenes", "box_iou"]


def box_iou(a, b):
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), boxes as x1, y1, x2, y2 -> (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


DigitScenes = collections.namedtuple("DigitScenes", ["images", "boxes", "labels", "glyphs"])
DigitScenes.__doc__ = """``digit_scenes`` output: ``images`` float32 (N, S, S) in [0, 1]; per image ``boxes[i]``
float32 (k, 4) xyxy pixels, ``labels[i]`` int64 (k,) digits, ``glyphs[i]`` int64 (k,) load_digits indices."""


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
                overlap = float(box_iou(corners, boxes).max(initial=0.0))
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
