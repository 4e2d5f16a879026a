"""The dense-prediction demo: COCO-style mAP on hand-made cases with known answers, the CenterNet targets and
decoding, and the demo's --quick run end to end."""
import numpy as np
import pytest

from slab_ms.experiments.detection_metrics import box_iou, coco_map

GT = np.array([[0.0, 0.0, 10.0, 10.0]])


def one(boxes, scores, labels):
    return np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float), np.asarray(labels, int)


def test_box_iou_known_values():
    iou = box_iou([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], [[0, 0, 10, 10]])
    np.testing.assert_allclose(iou[:, 0], [1.0, 50 / 150, 0.0])
    assert box_iou(np.zeros((0, 4)), GT).shape == (0, 1)


def test_perfect_detections_give_one_and_none_give_zero():
    gts = [(GT, [3]), (np.array([[2.0, 2, 8, 9], [20, 20, 30, 35]]), [3, 5])]
    preds = [one(g[0], np.linspace(0.9, 0.5, len(g[1])), g[1]) for g in gts]
    result = coco_map(preds, gts)
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)
    assert result["num_classes"] == 2
    empty = coco_map([one(np.zeros((0, 4)), [], []) for _ in gts], gts)
    assert empty["map"] == 0.0 and empty["map50"] == 0.0


def test_false_positive_ranked_first_halves_the_precision():
    # scores 0.9 (a box elsewhere: FP), 0.8 (exact: TP): precision at recall 1 is 1/2 -> AP 0.5 at every point
    preds = [one([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])]
    assert coco_map(preds, [(GT, [1])])["map50"] == pytest.approx(0.5)
    # the same two detections with the scores the other way round: AP 1 (the FP comes after full recall)
    preds = [one([[50, 50, 60, 60], [0, 0, 10, 10]], [0.8, 0.9], [1, 1])]
    assert coco_map(preds, [(GT, [1])])["map50"] == pytest.approx(1.0)


def test_half_recall_counts_51_of_the_101_recall_points():
    gts = [(GT, [0]), (GT + 20, [0])]
    preds = [one(GT, [0.9], [0]), one(np.zeros((0, 4)), [], [])]
    assert coco_map(preds, gts)["map50"] == pytest.approx(51 / 101)


def test_a_duplicate_detection_is_a_false_positive():
    # image 1: one box found twice (0.9 TP, 0.8 duplicate = FP); image 2: found once (0.7 TP)
    # hits T F T -> recall .5 .5 1, precision 1 .5 .667 -> envelope 1 .667 .667 -> AP (51 + 50 * 2/3) / 101
    gts = [(GT, [2]), (GT, [2])]
    preds = [one([[0, 0, 10, 10], [0, 0, 10, 10.5]], [0.9, 0.8], [2, 2]), one(GT, [0.7], [2])]
    assert coco_map(preds, gts)["map50"] == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_iou_thresholds_from_half_to_095():
    # IoU 0.62: a hit at 0.5, 0.55 and 0.6 only -> mAP@[.5:.95] = 3 / 10
    preds = [one([[0, 0, 10, 6.2]], [0.9], [4])]
    result = coco_map(preds, [(GT, [4])])
    assert result["map50"] == pytest.approx(1.0)
    assert result["map"] == pytest.approx(0.3)
    assert result["ap"][4] == pytest.approx([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])


def test_classes_are_matched_separately_and_classes_without_ground_truth_are_left_out():
    # the box is right but the class wrong: class 1 has AP 0; class 2 (no ground truth) is not averaged in
    result = coco_map([one(GT, [0.9], [2])], [(GT, [1])])
    assert result["map"] == 0.0 and result["num_classes"] == 1 and set(result["ap"]) == {1}
    # two classes, one found: mean of 1 and 0
    gts = [(np.vstack([GT, GT + 30]), [1, 2])]
    assert coco_map([one(GT, [0.9], [1])], gts)["map"] == pytest.approx(0.5)
    assert np.isnan(coco_map([one(GT, [0.9], [1])], [(np.zeros((0, 4)), [])])["map"])


def test_each_detection_takes_the_best_overlapping_box_and_max_detections_cuts_per_image():
    # two ground-truth boxes; the first detection overlaps both (IoU 0.85 and 0.94) and must take the second,
    # leaving the first for the second detection (IoU 1; with the second box it would have only 0.8 < 0.82)
    gts = [(np.array([[0, 0, 10, 10], [0, 0, 10, 8]]), [0, 0])]
    preds = [one([[0, 0, 10, 8.5], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    assert coco_map(preds, gts, iou_thresholds=[0.82])["ap"][0] == pytest.approx([1.0])
    # max_detections keeps the best-scored ones: the true positive has the lower score and is cut
    preds = [one([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    assert coco_map(preds, [(GT, [0])], max_detections=1)["map50"] == 0.0
    with pytest.raises(ValueError):
        coco_map(preds, [])
