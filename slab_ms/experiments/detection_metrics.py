"""COCO-style box mean average precision, written out in numpy (no pycocotools).

The rules are COCO's for one area range ("all") and no crowd boxes: per class and IoU threshold, the
detections of each image (best ``max_detections`` by score) are matched greedily in score order, each to the
still unmatched ground-truth box of the same class with the highest IoU at or above the threshold; a detection
without one is a false positive. Over all images, sorted by score, precision is made monotone (the envelope)
and read at the 101 recall points 0, 0.01, ..., 1 (0 beyond the highest recall reached); AP is their mean.
Classes without ground truth are left out of the mean. IoU is computed on continuous coordinates
(x1, y1, x2, y2), area = (x2 - x1)·(y2 - y1).
"""
import numpy as np

from ..data.scenes import box_iou

__all__ = ["box_iou", "coco_map", "COCO_IOU_THRESHOLDS", "RECALL_POINTS"]

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _match(det_boxes, gt_boxes, threshold):
    """True for each detection (in the given order) matched to a ground-truth box at IoU >= threshold."""
    ious = box_iou(det_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), bool)
    hits = np.zeros(len(det_boxes), bool)
    for d in range(len(det_boxes)):
        best, best_iou = -1, min(threshold, 1 - 1e-10)
        for g in range(len(gt_boxes)):
            if taken[g] or ious[d, g] < best_iou:
                continue
            best, best_iou = g, ious[d, g]
        if best >= 0:
            taken[best] = True
            hits[d] = True
    return hits


def _average_precision(scores, hits, num_gt):
    """COCO's 101-point interpolated AP of detections (``scores``, ``hits``) against ``num_gt`` boxes."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    hits = np.asarray(hits, bool)[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    recall = tp / num_gt
    precision = tp / (tp + fp + np.spacing(1))
    for i in range(len(precision) - 1, 0, -1):
        precision[i - 1] = max(precision[i - 1], precision[i])
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.zeros(len(RECALL_POINTS))
    valid = at < len(precision)
    sampled[valid] = precision[at[valid]]
    return float(sampled.mean())


def coco_map(predictions, ground_truths, iou_thresholds=COCO_IOU_THRESHOLDS, max_detections=100):
    """COCO-style mAP of box detections.

    Args:
        predictions: one ``(boxes (N, 4), scores (N,), labels (N,))`` per image.
        ground_truths: one ``(boxes (M, 4), labels (M,))`` per image, in the same order.
        iou_thresholds: the IoU thresholds averaged over (COCO's 0.5, 0.55, ..., 0.95).
        max_detections: detections kept per image and class, best scores first (COCO's 100).

    Returns a dict: ``map`` (mean over classes and thresholds), ``map50`` (at IoU 0.5, when among the
    thresholds), ``ap`` ({class: [AP per threshold]}) and ``num_classes`` (classes with ground truth). ``map``
    is NaN when no image has a ground-truth box.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truths)} images")
    thresholds = [float(t) for t in iou_thresholds]
    preds = [tuple(np.asarray(v) for v in p) for p in predictions]
    gts = [tuple(np.asarray(v) for v in g) for g in ground_truths]
    classes = sorted({int(c) for _, labels in gts for c in labels.reshape(-1)})
    ap = {}
    for c in classes:
        num_gt = sum(int((labels == c).sum()) for _, labels in gts)
        per_threshold = []
        for t in thresholds:
            scores, hits = [], []
            for (boxes, det_scores, det_labels), (gt_boxes, gt_labels) in zip(preds, gts):
                keep = np.flatnonzero(det_labels.reshape(-1) == c)
                keep = keep[np.argsort(-det_scores.reshape(-1)[keep], kind="mergesort")][:max_detections]
                if not len(keep):
                    continue
                gt_c = gt_boxes.reshape(-1, 4)[gt_labels.reshape(-1) == c]
                scores.append(det_scores.reshape(-1)[keep])
                hits.append(_match(boxes.reshape(-1, 4)[keep], gt_c, t))
            if scores:
                per_threshold.append(_average_precision(np.concatenate(scores), np.concatenate(hits), num_gt))
            else:
                per_threshold.append(0.0)
        ap[c] = per_threshold
    table = np.array([ap[c] for c in classes]).reshape(len(classes), len(thresholds))
    result = {"map": float(table.mean()) if classes else float("nan"), "ap": ap, "num_classes": len(classes)}
    if 0.5 in [round(t, 10) for t in thresholds]:
        i = [round(t, 10) for t in thresholds].index(0.5)
        result["map50"] = float(table[:, i].mean()) if classes else float("nan")
    return result
