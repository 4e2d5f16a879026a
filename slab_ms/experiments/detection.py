"""Dense-prediction demo: a CenterNet-style detector on the multi-scale features of a PRepBN backbone.

    bash scripts/run_detection_demo.sh          # or: python -m slab_ms.experiments.detection
    python -m slab_ms.experiments.detection --quick     # a tiny run for the tests

The data are scenes of scikit-learn's handwritten digits composed onto 64×64 canvases with their boxes and
labels (``slab_ms.data.digit_scenes``; validation scenes use glyphs the training scenes never show). The
detector is the backbone in ``features_only`` form (its four stage maps, strides 4-32), a feature pyramid
(1×1 lateral convs, nearest-neighbour top-down sum, a 3×3 conv on the finest level) and CenterNet's head on
that level: a per-class centre heatmap (penalty-reduced focal loss against Gaussian peaks at the box centres,
σ = 0.54·size/6 per axis as in TTFNet), the box size and the sub-cell offset of the centre (L1 at the centres).
Decoding keeps the 3×3 local maxima of the heatmap (CenterNet's peak extraction in place of NMS). The
backbone's γ decays from LayerNorm to RepBN inside the compiled train step (GRAPH_MODE) over the first 80 % of
the optimizer steps. The demo prints COCO-style mAP@0.5 and mAP@[.5:.95] (``detection_metrics.coco_map``),
writes a picture of predictions on validation scenes, folds every norm (``reparameterize_model``), checks the
folded detector's outputs, exports it to MindIR, reloads the file and checks it again. Each run writes to a
new folder (``--output_dir``, default ``./output/detection/<date-time>``). Bad input is one
``detection: error: ...`` line and exit status 2.
"""
import argparse
import functools
import os
import sys
import time

import numpy as np

TOOL = "detection"
NUM_CLASSES = 10  # the ten digits
SIGMA_FACTOR = 0.54 / 6  # Gaussian σ per axis = 0.54 · box side / 6 (TTFNet's elliptical targets)
SIZE_WEIGHT = 0.1  # CenterNet's weights: focal heatmap 1, size 0.1, offset 1
print_now = functools.partial(print, flush=True)

DEFAULT_MODEL = "pvt_tiny_prepbn"
# A PVT-Tiny with PRepBN shrunk to one block of width 32-128 per stage (the family's own kwargs).
BACKBONE = dict(embed_dims=(32, 64, 96, 128), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), mlp_ratios=(4, 4, 4, 4),
                sr_ratios=(4, 2, 1, 1))
QUICK_BACKBONE = dict(embed_dims=(16, 16, 32, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                      mlp_ratios=(2, 2, 2, 2), sr_ratios=(4, 2, 1, 1))
# The backbone's output norms are RepBN, BN(x) + η·x, folded into exact affine maps like every other norm. Measured
# at lr 2e-3 (500 steps): with PRepBN output norms the loss diverged as γ fell (48.9 at step 100), with RepBN ones too
# (10.0), with BatchNorm ones the stage-4 tokens grew to 1e9 and the detector did not learn (mAP@0.5 0.05); at lr
# 1e-3 all three train (loss at step 125: RepBN 1.21, BN 1.22, LayerNorm 1.35).
OUT_NORM = "repbn"
FULL = dict(train_images=4000, val_images=300, epochs=4, batch_size=32, lr=1e-3, fpn_channels=64,
            log_interval=25, show_images=8)
QUICK = dict(train_images=48, val_images=16, epochs=1, batch_size=8, lr=1e-3, fpn_channels=16,
             log_interval=2, show_images=4)


def backbone_defaults(model, quick):
    """Factory kwargs under ``--model_kwargs``: the demo's shrunk PVT for ``DEFAULT_MODEL``; for another
    model its released architecture, or with ``quick`` its family's tiny test configuration; RepBN output
    norms for all."""
    if model == DEFAULT_MODEL:
        return dict(QUICK_BACKBONE if quick else BACKBONE, out_norm=OUT_NORM)
    if not quick:
        return dict(out_norm=OUT_NORM)
    from ..models.registry import tiny_config
    return {k: v for k, v in dict(tiny_config(model), out_norm=OUT_NORM).items()
            if k not in ("image_size", "img_size", "num_classes")}


# ------------------------------------------------------------------------------------------- targets
def centernet_targets(boxes, labels, num_classes, out_hw, stride):
    """Training targets of one image, ``(num_classes + 5, H, W)`` float32: per-class heatmaps (1 exactly at
    each box centre's cell, a Gaussian around it, the maximum where they overlap), the box width and height
    in output cells, the centre's offset within its cell, and the mask of the centre cells (1 where a box is)."""
    h, w = out_hw
    target = np.zeros((num_classes + 5, h, w), np.float32)
    heat, size, offset, mask = target[:num_classes], target[num_classes:num_classes + 2], \
        target[num_classes + 2:num_classes + 4], target[num_classes + 4]
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    for (x1, y1, x2, y2), label in zip(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels).reshape(-1)):
        bw, bh = (x2 - x1) / stride, (y2 - y1) / stride
        cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
        ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
        sx, sy = max(SIGMA_FACTOR * bw, 1e-2), max(SIGMA_FACTOR * bh, 1e-2)
        gauss = np.exp(-((xs - ix) ** 2 / (2 * sx * sx) + (ys - iy) ** 2 / (2 * sy * sy)))
        np.maximum(heat[int(label)], gauss, out=heat[int(label)])
        size[:, iy, ix] = bw, bh
        offset[:, iy, ix] = cx - ix, cy - iy
        mask[iy, ix] = 1.0
    return target


def _peaks(heat):
    """``heat`` where it equals the maximum of its 3×3 neighbourhood, 0 elsewhere (last two axes)."""
    padded = np.pad(heat, [(0, 0)] * (heat.ndim - 2) + [(1, 1), (1, 1)], constant_values=-np.inf)
    h, w = heat.shape[-2:]
    neighbourhood = np.max(np.stack([padded[..., i:i + h, j:j + w] for i in range(3) for j in range(3)]), axis=0)
    return np.where(heat == neighbourhood, heat, 0.0)


def decode(outputs, num_classes, stride, top_k=100, min_score=0.01):
    """Boxes from the detector's outputs ``(B, num_classes + 4, H, W)`` (heatmap logits, size, offset): the
    ``top_k`` highest 3×3 local maxima of the heatmaps above ``min_score``, one box each. Returns one
    ``(boxes (N, 4) x1 y1 x2 y2 in pixels, scores (N,), labels (N,))`` per image."""
    outputs = np.asarray(outputs, np.float64)
    heat = _peaks(1.0 / (1.0 + np.exp(-outputs[:, :num_classes])))
    b, _, h, w = heat.shape
    results = []
    for i in range(b):
        flat = heat[i].reshape(-1)
        order = np.argsort(-flat, kind="stable")[:top_k]
        order = order[flat[order] >= min_score]
        label, rest = np.divmod(order, h * w)
        y, x = np.divmod(rest, w)
        bw, bh = outputs[i, num_classes, y, x], outputs[i, num_classes + 1, y, x]
        cx, cy = x + outputs[i, num_classes + 2, y, x], y + outputs[i, num_classes + 3, y, x]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1) * stride
        results.append((boxes.astype(np.float32), flat[order].astype(np.float32), label.astype(np.int64)))
    return results


# ----------------------------------------------------------------------------------------------- model
@functools.lru_cache(maxsize=None)
def _detector_cells():
    """The detector's cells (defined on first use: MindSpore is imported only once the arguments are good)."""
    import mindspore as ms
    from mindspore import nn, ops
    from mindspore.common.initializer import Constant, HeNormal, Normal

    def conv(cin, cout, k, bias_init="zeros", weight_init=None):
        return nn.Conv2d(cin, cout, k, pad_mode="same", has_bias=True, bias_init=bias_init,
                         weight_init=weight_init or HeNormal(mode="fan_out", nonlinearity="relu"))

    class FeaturePyramid(nn.Cell):
        """FPN's top-down path to the finest level: 1×1 lateral convs, nearest upsampling to the next map's
        size (so any input size works), sums, and a 3×3 conv on the result."""

        def __init__(self, in_channels, channels):
            super().__init__()
            self.lateral = nn.CellList([conv(c, channels, 1) for c in in_channels])
            self.smooth = conv(channels, channels, 3)

        def construct(self, features):
            x = self.lateral[-1](features[-1])
            for i in range(len(features) - 2, -1, -1):
                lateral = self.lateral[i](features[i])
                x = lateral + ops.interpolate(x, size=lateral.shape[2:], mode="nearest")
            return self.smooth(x)

    class CenterNetHead(nn.Cell):
        """Three branches (3×3 conv, ReLU, 1×1 conv): class heatmap logits (bias −2.19, a prior of 0.1 as in
        CenterNet), box size and centre offset; concatenated into one ``(B, K + 4, H, W)`` tensor."""

        def __init__(self, channels, num_classes):
            super().__init__()

            def branch(cout, bias_init="zeros"):
                return nn.SequentialCell([conv(channels, channels, 3), nn.ReLU(),
                                          conv(channels, cout, 1, bias_init=bias_init, weight_init=Normal(0.01))])

            self.heatmap = branch(num_classes, Constant(-2.19))
            self.size = branch(2)
            self.offset = branch(2)

        def construct(self, x):
            return ops.concat((self.heatmap(x), self.size(x), self.offset(x)), axis=1)

    class CenterNet(nn.Cell):
        """Backbone (``features_only``) → FeaturePyramid → CenterNetHead at the finest output's stride."""

        def __init__(self, backbone, num_classes, channels):
            super().__init__()
            self.backbone = backbone
            self.neck = FeaturePyramid([info["chs"] for info in backbone.feature_info], channels)
            self.head = CenterNetHead(channels, num_classes)
            self.stride = int(backbone.feature_info[0]["reduction"])
            self.num_classes = num_classes

        def construct(self, x):
            return self.head(self.neck(self.backbone(x)))

    class CenterNetLoss(nn.Cell):
        """CenterNet's loss on ``centernet_targets``: penalty-reduced focal loss on the heatmaps (α 2, β 4),
        normalised by the number of boxes, + 0.1 × L1 of the sizes + L1 of the offsets at the centre cells."""

        def __init__(self, num_classes):
            super().__init__()
            self.k = num_classes

        def construct(self, outputs, targets):
            k = self.k
            p = ops.clamp(ops.sigmoid(outputs[:, :k]), 1e-4, 1.0 - 1e-4)
            heat = targets[:, :k]
            pos = (heat >= 1.0).astype(ms.float32)
            pos_loss = ops.log(p) * ops.pow(1.0 - p, 2.0) * pos
            neg_loss = ops.log(1.0 - p) * ops.pow(p, 2.0) * ops.pow(1.0 - heat, 4.0) * (1.0 - pos)
            mask = targets[:, k + 4:k + 5]
            num = ops.maximum(mask.sum(), 1.0)
            focal = -(pos_loss.sum() + neg_loss.sum()) / num
            size = (ops.abs(outputs[:, k:k + 2] - targets[:, k:k + 2]) * mask).sum() / (2.0 * num)
            offset = (ops.abs(outputs[:, k + 2:k + 4] - targets[:, k + 2:k + 4]) * mask).sum() / (2.0 * num)
            return focal + SIZE_WEIGHT * size + offset

    return CenterNet, CenterNetLoss


def build_detector(model, image_size, fpn_channels, backbone_kwargs):
    """The detector on ``slab_ms.create_model(model, features_only=True, out_indices=(0, 1, 2, 3), ...)``."""
    from .. import create_model
    CenterNet, _ = _detector_cells()
    backbone = create_model(model, features_only=True, out_indices=(0, 1, 2, 3), in_channels=1,
                            image_size=image_size, **backbone_kwargs)
    return CenterNet(backbone, NUM_CLASSES, fpn_channels)


# ---------------------------------------------------------------------------------------- arguments
def parse_args(argv=None):
    from .. import cli
    parser = argparse.ArgumentParser(prog=TOOL, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    cli.add_budget_args(parser, FULL, QUICK, "a tiny backbone and a few steps (for the tests)")
    cli.add_model_args(parser, model_default=DEFAULT_MODEL)
    parser.add_argument("--seed", type=int, default=0)
    group = parser.add_argument_group("output")
    group.add_argument("--output_dir", default=None,
                       help="new or empty folder for this run's files (default ./output/detection/<date-time>)")
    group.add_argument("--file_name", default=None,
                       help="MindIR path of the folded detector without extension (default <output_dir>/detector)")
    cli.add_device_args(parser)
    args = parser.parse_args(argv)
    return cli.apply_budget(args, FULL, QUICK)


def check_args(args):
    from ..cli import UsageError
    from ..factory import check_model_name
    for name in ("train_images", "val_images", "epochs", "batch_size", "fpn_channels", "log_interval"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 1 <= args.show_images <= args.val_images:
        raise UsageError(f"--show_images must be between 1 and --val_images ({args.val_images}), got "
                         f"{args.show_images}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    if args.train_images < args.batch_size:
        raise UsageError(f"--train_images {args.train_images} is less than one batch (--batch_size {args.batch_size})")
    if args.num_classes not in (None, NUM_CLASSES):
        raise UsageError(f"--num_classes: the digit scenes have {NUM_CLASSES} classes, got {args.num_classes}")
    check_model_name(args.model, UsageError)
    if args.image_size is None:
        args.image_size = 64
    if args.image_size < 32 or args.image_size % 32:
        raise UsageError(f"--image_size must be a multiple of 32 (every stage map then has a whole size; a digit "
                         f"spans up to 28 pixels), got {args.image_size}")
    if args.output_dir is not None and os.path.exists(args.output_dir) and (
            not os.path.isdir(args.output_dir) or os.listdir(args.output_dir)):
        raise UsageError(f"--output_dir '{args.output_dir}' exists and is not an empty folder; choose a new one "
                         "(nothing was written)")
    if args.file_name is not None and os.path.exists(args.file_name + ".mindir"):
        raise UsageError(f"'{args.file_name}.mindir' exists; choose another --file_name (nothing was overwritten)")
    steps = args.epochs * (args.train_images // args.batch_size)
    if steps < 5:
        raise UsageError(f"{steps} optimizer steps are too few for the γ schedule to decay; raise --epochs or "
                         "--train_images")


def new_output_dir(path):
    """``path`` (created when missing; ``check_args`` refused one that is not empty) or a new
    ``./output/detection/<date-time>``."""
    from ..utils import new_run_folder
    if path is not None:
        os.makedirs(path, exist_ok=True)
        return path
    return new_run_folder(os.path.join("output", "detection"))


# ------------------------------------------------------------------------------------------ training
def scene_arrays(scenes):
    """Images of ``digit_scenes`` as the detector's input, (N, 1, H, W) float32 in [-1, 1]."""
    return (scenes.images[:, None] * 2.0 - 1.0).astype(np.float32)


def train(args, detector, scenes):
    """Train ``detector`` on ``scenes`` in the compiled train step; returns (seconds, final mean loss)."""
    from mindspore import Tensor, nn
    from ..training import NetWithLoss, TrainStep, param_groups
    from .train_steps import train_steps, warmup_cosine_lr
    _, CenterNetLoss = _detector_cells()

    images = scene_arrays(scenes)
    out_hw = (args.image_size // detector.stride, args.image_size // detector.stride)
    targets = np.stack([centernet_targets(boxes, labels, NUM_CLASSES, out_hw, detector.stride)
                        for boxes, labels in zip(scenes.boxes, scenes.labels)])
    per_epoch = len(images) // args.batch_size
    lrs = warmup_cosine_lr(per_epoch * args.epochs, args.lr)
    optimizer = nn.AdamWeightDecay(param_groups(detector, 0.05), learning_rate=Tensor(lrs))
    step = TrainStep(NetWithLoss(detector, CenterNetLoss(NUM_CLASSES)), optimizer, detector.backbone, clip_grad=10.0)
    rng = np.random.default_rng(args.seed)

    def batches():
        for _ in range(args.epochs):
            order = rng.permutation(len(images))
            for j in range(per_epoch):
                batch = order[j * args.batch_size:(j + 1) * args.batch_size]
                yield images[batch], targets[batch]

    seconds, losses = train_steps(step, detector.backbone, batches(), lrs, args.log_interval, args.batch_size,
                                  print_now, steps_per_epoch=per_epoch)
    return seconds, float(np.mean(losses[-args.log_interval:]))


def predict(net, images, batch_size):
    """``net``'s outputs on ``images`` in batches of ``batch_size`` (the last batch may be smaller)."""
    from mindspore import Tensor
    return np.concatenate([net(Tensor(images[i:i + batch_size])).asnumpy()
                           for i in range(0, len(images), batch_size)])


def evaluate(outputs, scenes, stride):
    from .detection_metrics import coco_map
    return coco_map(decode(outputs, NUM_CLASSES, stride), list(zip(scenes.boxes, scenes.labels)))


# ------------------------------------------------------------------------------------------- outputs
def save_picture(path, scenes, detections, count, min_score=0.3, zoom=4, columns=4):
    """A grid of ``count`` validation scenes (zoomed ``zoom``×): ground-truth boxes in green, detections
    with score >= ``min_score`` in red with "digit score". Written atomically as PNG."""
    from PIL import Image, ImageDraw
    from ..utils import atomic_output
    size = scenes.images.shape[1] * zoom
    rows = -(-count // columns)
    sheet = Image.new("RGB", (columns * size, rows * size), "white")
    for i in range(count):
        tile = Image.fromarray((scenes.images[i] * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)
        tile = tile.convert("RGB")
        draw = ImageDraw.Draw(tile)
        for box in scenes.boxes[i]:
            draw.rectangle([float(v) * zoom for v in box], outline=(0, 200, 0), width=1)
        boxes, scores, labels = detections[i]
        for box, score, label in zip(boxes, scores, labels):
            if score >= min_score:
                x1, y1, x2, y2 = (float(v) * zoom for v in box)
                draw.rectangle([x1, y1, x2, y2], outline=(230, 30, 30), width=2)
                at = (max(x1, 0), max(y1 - 11, 0))
                draw.rectangle(draw.textbbox(at, f"{label} {score:.2f}"), fill=(230, 30, 30))
                draw.text(at, f"{label} {score:.2f}", fill=(255, 255, 255))
        sheet.paste(tile, ((i % columns) * size, (i // columns) * size))
    with atomic_output(path, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")
    return path


def export_mindir(deploy, images, expected, file_name):
    """Export ``deploy`` (input shape: one image) to ``file_name``.mindir, reload it and compare its outputs on
    each of ``images`` with ``expected``; the file is renamed into place only when they agree. Returns
    ``(path, max|diff|, tolerance)``."""
    import mindspore as ms
    from mindspore import Tensor, nn
    from ..utils import atomic_output
    path = file_name + ".mindir"
    if os.path.exists(path):
        from ..cli import UsageError
        raise UsageError(f"'{path}' exists; choose another --file_name (nothing was overwritten)")
    with atomic_output(path, suffix=".mindir") as tmp:
        ms.export(deploy, Tensor(images[:1]), file_name=tmp[:-len(".mindir")], file_format="MINDIR")
        graph = nn.GraphCell(ms.load(tmp))
        reloaded = np.concatenate([graph(Tensor(images[i:i + 1])).asnumpy() for i in range(len(images))])
        diff, tol = max_diff(expected, reloaded)
        if diff > tol:
            raise RuntimeError(f"the reloaded MindIR differs from the trained detector: max|diff| {diff:.3g} > "
                               f"{tol:.3g} (no file written)")
    return path, diff, tol


def max_diff(a, b):
    """``(max|a - b|, tolerance)``: export.py's check of ``b`` against the outputs ``a`` of the trained detector."""
    from ..export import max_difference, tolerance
    return max_difference([b], [a]), tolerance([a])


# ---------------------------------------------------------------------------------------------- main
def _demo(argv):
    args = parse_args(argv)
    check_args(args)
    from .. import cli
    cli.set_context(args)
    from ..data import digit_scenes
    from ..models.registry import family_of
    from ..reparam import remaining_norms, reparameterize_model
    from ..utils import RunLock, atomic_output

    wall = time.perf_counter()
    load = os.getloadavg()
    print_now(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    t0 = time.perf_counter()
    train_scenes = digit_scenes(args.train_images, canvas_size=args.image_size, seed=args.seed, split="train")
    val_scenes = digit_scenes(args.val_images, canvas_size=args.image_size, seed=args.seed, split="val")
    n_boxes = sum(len(b) for b in train_scenes.boxes), sum(len(b) for b in val_scenes.boxes)
    print_now(f"digit scenes {args.image_size}x{args.image_size}: {args.train_images} train ({n_boxes[0]} digits), "
              f"{args.val_images} validation ({n_boxes[1]} digits, glyphs unseen in training); made in "
              f"{time.perf_counter() - t0:.1f} s")

    steps = args.epochs * (args.train_images // args.batch_size)
    backbone_kwargs = backbone_defaults(args.model, args.quick)
    backbone_kwargs.update(args.model_kwargs or {})
    backbone_kwargs.setdefault("prepbn_decay_steps", max(1, int(0.8 * steps)))
    try:
        detector = build_detector(args.model, args.image_size, args.fpn_channels, backbone_kwargs)
    except TypeError as err:
        raise cli.UsageError(f"--model {args.model} with {backbone_kwargs}: {err}") from err
    n_params = sum(int(np.prod(p.shape)) for p in detector.trainable_params())
    n_backbone = sum(int(np.prod(p.shape)) for p in detector.backbone.trainable_params())
    norm = backbone_kwargs.get("norm") or family_of(args.model).ARCHS[args.model].get("norm", "?")
    print_now(f"detector: {args.model} backbone (norm {norm}; {n_backbone:,} parameters; outputs "
              f"{[(i['chs'], i['reduction']) for i in detector.backbone.feature_info]} (channels, stride)), FPN + "
              f"CenterNet head at stride {detector.stride}; {n_params:,} parameters; {steps} steps of "
              f"{args.batch_size}")
    out_dir = new_output_dir(args.output_dir)
    lock = RunLock(out_dir).acquire()
    print_now(f"output folder {out_dir}")

    train_seconds, final_loss = train(args, detector, train_scenes)
    val_images = scene_arrays(val_scenes)
    outputs = predict(detector, val_images, 50)
    result = evaluate(outputs, val_scenes, detector.stride)
    print_now(f"validation ({args.val_images} scenes): mAP@0.5 {result['map50']:.4f}  mAP@[.5:.95] "
              f"{result['map']:.4f}  (trained in {train_seconds:.0f} s)")

    picture = save_picture(os.path.join(out_dir, "predictions.png"), val_scenes,
                           decode(outputs[:args.show_images], NUM_CLASSES, detector.stride), args.show_images)
    print_now(f"predictions on {args.show_images} validation scenes: {picture}")
    from ..weights import save_checkpoint
    ckpt = os.path.join(out_dir, "detector.ckpt")
    with atomic_output(ckpt, suffix=".ckpt") as tmp:
        save_checkpoint(detector, tmp)

    deploy = reparameterize_model(detector)
    left = remaining_norms(deploy)
    deploy_outputs = predict(deploy, val_images, 50)
    diff, tol = max_diff(outputs, deploy_outputs)
    deploy_result = evaluate(deploy_outputs, val_scenes, detector.stride)
    kept = f"{len(left)} norm cell(s) left ({', '.join(sorted({kind for _, kind, _ in left}))}: cannot fold)"
    print_now(f"folded detector: {kept if left else 'no norm cell left'}; "
              f"outputs max|diff| {diff:.3g} (tolerance {tol:.3g}); mAP@0.5 {deploy_result['map50']:.4f}  "
              f"mAP@[.5:.95] {deploy_result['map']:.4f}")
    if diff > tol:
        raise RuntimeError(f"the folded detector differs from the trained one: max|diff| {diff:.3g} > {tol:.3g}")
    file_name = args.file_name or os.path.join(out_dir, "detector")
    checked = val_images[:4]
    mindir, export_diff, export_tol = export_mindir(deploy, checked, outputs[:len(checked)], file_name)
    print_now(f"exported {mindir}; reloaded (mindspore.load + nn.GraphCell) on {len(checked)} images: max|diff| "
              f"{export_diff:.3g} vs the trained detector (tolerance {export_tol:.3g})")

    load_end = os.getloadavg()
    metrics = dict(model=args.model, norm=norm, backbone_kwargs=backbone_kwargs, fpn_channels=args.fpn_channels,
                   image_size=args.image_size, seed=args.seed, map50=result["map50"], map=result["map"],
                   deploy_map50=deploy_result["map50"], deploy_map=deploy_result["map"], deploy_max_diff=diff,
                   export_max_diff=export_diff, norms_left=len(left), train_seconds=train_seconds,
                   final_loss=final_loss, steps=steps, wall_seconds=time.perf_counter() - wall,
                   load_start=list(load), load_end=list(load_end), picture=picture, mindir=mindir, checkpoint=ckpt)
    import json
    with atomic_output(os.path.join(out_dir, "metrics.json"), suffix=".json") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=1)
    print_now(f"wall time {metrics['wall_seconds']:.0f} s; load average at the end {load_end[0]:.2f} "
              f"{load_end[1]:.2f} {load_end[2]:.2f}; metrics in {os.path.join(out_dir, 'metrics.json')}")
    lock.release()
    return 0


def main(argv=None):
    from ..cli import run
    return run(TOOL, _demo, argv)


if __name__ == "__main__":
    sys.exit(main())
