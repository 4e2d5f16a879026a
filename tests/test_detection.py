"""The dense-prediction demo: COCO-style mAP on hand-made cases with known answers, the CenterNet targets and
decoding, and the demo's --quick run end to end."""
import os

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


def test_targets_decode_back_to_the_boxes():
    # outputs built from the targets (heatmap 1 -> a large logit, the rest -> very negative) decode to the boxes
    from slab_ms.experiments.detection import NUM_CLASSES, centernet_targets, decode
    boxes = np.array([[3.0, 5.0, 21.0, 30.0], [30.0, 2.0, 50.0, 20.0], [40.0, 40.0, 63.0, 62.0]])
    labels = np.array([7, 0, 7])
    target = centernet_targets(boxes, labels, NUM_CLASSES, (16, 16), 4)
    assert target.shape == (NUM_CLASSES + 5, 16, 16)
    heat, mask = target[:NUM_CLASSES], target[NUM_CLASSES + 4]
    assert (heat == 1.0).sum() == 3 and mask.sum() == 3 and heat.max() == 1.0 and heat.min() >= 0
    assert heat[7, 17 // 4, 12 // 4] == 1.0 and heat[0, 11 // 4, 40 // 4] == 1.0  # cell of each centre
    assert 0 < heat[7, 17 // 4, 12 // 4 + 1] < 1  # a Gaussian around it
    logits = np.where(heat >= 1.0, 10.0, -10.0)
    outputs = np.concatenate([logits, target[NUM_CLASSES:NUM_CLASSES + 4]])[None]
    (found, scores, found_labels), = decode(outputs, NUM_CLASSES, 4)
    order = np.argsort(found[:, 0])
    np.testing.assert_allclose(found[order], boxes, atol=1e-5)
    assert list(found_labels[order]) == [7, 0, 7] and np.all(scores > 0.99)


def test_decode_keeps_only_local_maxima():
    from slab_ms.experiments.detection import decode
    outputs = np.full((1, 1 + 4, 5, 5), -20.0)
    outputs[0, 0, 2, 2], outputs[0, 0, 2, 3], outputs[0, 0, 0, 0] = 3.0, 2.0, 1.0  # (2, 3) is next to a higher one
    outputs[0, 1:3], outputs[0, 3:5] = 2.0, 0.0  # size 2 cells, no offset
    (boxes, scores, labels), = decode(outputs, 1, 4, min_score=0.5)
    assert len(boxes) == 2 and scores[0] == pytest.approx(1 / (1 + np.exp(-3.0)))
    np.testing.assert_allclose(boxes[0], [(2 - 1) * 4, (2 - 1) * 4, (2 + 1) * 4, (2 + 1) * 4])


# ------------------------------------------------------------------------------------------- demo
def test_demo_quick_trains_reports_draws_and_exports(tmp_path):
    """The one command, in its own process: a finite mAP in [0, 1], a valid PNG, and a MindIR file that reloads
    and gives the outputs of the trained detector rebuilt here from the run's checkpoint."""
    import json
    import subprocess

    import mindspore as ms
    from PIL import Image

    from slab_ms.data import digit_scenes
    from slab_ms.experiments.detection import build_detector, scene_arrays
    from slab_ms.reparam import remaining_norms
    from slab_ms.weights import load_checkpoint

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "run"
    result = subprocess.run(["bash", os.path.join(root, "scripts", "run_detection_demo.sh"), "--quick",
                             "--output_dir", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "γ schedule finished" in result.stdout and "no norm cell left" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("map50", "map", "deploy_map50", "deploy_map"):
        assert np.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, metrics
    assert metrics["norms_left"] == 0
    assert f"mAP@0.5 {metrics['map50']:.4f}" in result.stdout
    with Image.open(out / "predictions.png") as picture:
        picture.verify()
    with Image.open(out / "predictions.png") as picture:
        assert picture.format == "PNG" and picture.size == (4 * 256, 256)

    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = build_detector(metrics["model"], metrics["image_size"], metrics["fpn_channels"], metrics["backbone_kwargs"])
    load_checkpoint(net, str(out / "detector.ckpt"))
    net.set_train(False)
    images = scene_arrays(digit_scenes(2, canvas_size=metrics["image_size"], seed=metrics["seed"], split="val"))
    graph = ms.nn.GraphCell(ms.load(str(out / "detector.mindir")))
    for i in range(2):
        expected = net(ms.Tensor(images[i:i + 1])).asnumpy()
        got = graph(ms.Tensor(images[i:i + 1])).asnumpy()
        assert expected.shape == (1, 10 + 4, 16, 16)
        np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))
    assert remaining_norms(net)  # the trained form still has its norms: the file holds the folded one


@pytest.mark.parametrize("argv, message", [(["--epochs", "0"], "--epochs must be >= 1"),
                                           (["--model", "no_such_model"], "unknown --model 'no_such_model'"),
                                           (["--num_classes", "3"], "the digit scenes have 10 classes"),
                                           (["--model_kwargs", "[1]"], "expected a JSON object")])
def test_demo_bad_input_is_one_message_and_exit_2(capsys, argv, message):
    from slab_ms.experiments import detection
    try:
        code = detection.main(argv)
    except SystemExit as stop:  # argparse's own errors: usage line + "detection: error: ..."
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("detection: error:") and message in err[-1], err


def test_demo_never_writes_into_another_runs_folder(capsys, tmp_path):
    from slab_ms.experiments import detection
    (tmp_path / "earlier.txt").write_text("another run's file")
    assert detection.main(["--quick", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is not an empty folder" in err[0], err
    assert os.listdir(tmp_path) == ["earlier.txt"]
    (tmp_path / "old.mindir").write_text("another run's export")
    assert detection.main(["--quick", "--output_dir", str(tmp_path / "new"), "--file_name", str(tmp_path / "old")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "old.mindir' exists" in err[0], err
    assert sorted(os.listdir(tmp_path)) == ["earlier.txt", "old.mindir"]


def test_console_script_points_at_the_demo():
    import importlib
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "setup.py"), encoding="utf-8") as f:
        (target,) = re.findall(r'"slab-detection-demo=([\w.]+:\w+)"', f.read())
    module, _, function = target.partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_export_keeps_the_mindir_only_when_the_reloaded_outputs_agree(tmp_path):
    import mindspore as ms
    from slab_ms.experiments.detection import export_mindir
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = ms.nn.Conv2d(1, 2, 1, has_bias=True)
    images = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    expected = net(ms.Tensor(images)).asnumpy()
    with pytest.raises(RuntimeError, match="no file written"):
        export_mindir(net, images, expected + 1.0, str(tmp_path / "bad"))
    assert os.listdir(tmp_path) == []
    path, diff, tol = export_mindir(net, images, expected, str(tmp_path / "good"))
    assert os.listdir(tmp_path) == ["good.mindir"] and diff <= tol


def test_each_run_gets_a_new_default_folder(tmp_path, monkeypatch):
    from slab_ms.experiments.detection import new_output_dir
    monkeypatch.chdir(tmp_path)
    first, second = new_output_dir(None), new_output_dir(None)
    assert first != second and os.path.dirname(first) == os.path.dirname(second) == os.path.join("output", "detection")
    assert os.path.isdir(first) and os.path.isdir(second) and os.listdir(first) == []
