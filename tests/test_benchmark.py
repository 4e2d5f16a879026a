"""The benchmark runs end to end on tiny models and writes the documented JSON / CSV; no timing assertions."""
import csv
import json

import numpy as np
import pytest

from slab_ms import benchmark, create_model
from slab_ms.benchmark import children, report, stats
from slab_ms.benchmark.families import GEMM
from slab_ms.layers.flops import count_flops
from mindcv.utils.amp import auto_mixed_precision


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    paths = {"json": str(folder / "out.json"), "csv": str(folder / "out.csv")}
    # 0 is what the console script (sys.exit(main())) exits with after a successful run
    assert benchmark.main(["--quick", "--families", "deit", "--batch_sizes", "1", "--repeats", "1",
                           "--json", paths["json"], "--csv", paths["csv"]]) == 0
    with open(paths["json"]) as f:
        result = json.load(f)
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    return result, rows


def test_json_has_every_form_with_positive_numbers(quick_run):
    result, _ = quick_run
    meta = result["meta"]
    assert meta["batch_sizes"] == [1] and meta["repeats"] == 1 and meta["warmup"] == 3 and meta["quick"] is True
    assert isinstance(meta["threads"], int) and meta["threads"] >= 1
    assert len(meta["load_average_start"]) == 3 and len(meta["load_average_end"]) == 3
    assert meta["gemm"]["gflop"] > 0
    assert [r["form"] for r in result["results"]] == list(benchmark.FORMS)
    for row in result["results"]:
        assert row["family"] == "deit" and row["batch_size"] == 1
        assert isinstance(row["model"], str) and isinstance(row["deploy"], bool)
        assert len(row["samples_ms"]) == (2 if row["form"] == "ln" else 1)  # the baseline runs in both groups
        for key in ("median_ms", "min_ms", "max_ms", "images_per_s", "baseline_median_ms", "speedup_vs_baseline",
                    "gflop_per_image", "gflop_per_s", "gemm_gflop_per_s", "gemm_fraction", "peak_rss_mb"):
            assert isinstance(row[key], float) and row[key] > 0, key
        assert row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    baseline = result["results"][0]
    assert baseline["form"] == "ln" and baseline["speedup_vs_baseline"] == 1.0


def test_paired_ratio_divides_each_round_by_the_baseline_of_its_own_group():
    """Synthetic samples: group 0's baseline is slow in round 2 and group 1's in round 1, so only the right
    pairing gives these ratios (the ratio of medians differs from both)."""
    args = benchmark.parse_args(["--families", "deit", "--forms", "prepbn_deploy", "slab", "slab_deploy",
                                 "--batch_sizes", "1", "--repeats", "3"])
    assert benchmark._groups(args.forms) == [["prepbn_deploy", "slab"], ["slab_deploy"]]
    ln, gemm = ("deit", "ln"), GEMM
    samples = {(0, ln, 1): [0.010, 0.020, 0.010], (0, ("deit", "prepbn_deploy"), 1): [0.009, 0.016, 0.0085],
               (0, ("deit", "slab"), 1): [0.011, 0.022, 0.012], (0, gemm, 1): [0.1] * 3,
               (1, ln, 1): [0.040, 0.010, 0.010], (1, ("deit", "slab_deploy"), 1): [0.030, 0.008, 0.007],
               (1, gemm, 1): [0.1] * 3}
    result = stats.summarise(args, samples, {}, {}, {}, {}, (0, 0, 0), (0, 0, 0), False)
    rows = {r["form"]: r for r in result["results"]}
    for form, ratios in (("prepbn_deploy", [0.9, 0.8, 0.85]), ("slab", [1.1, 1.1, 1.2]),
                         ("slab_deploy", [0.75, 0.8, 0.7])):
        assert rows[form]["time_ratio_paired"] == pytest.approx(np.median(ratios)), form
        assert rows[form]["time_ratio_q1"] == pytest.approx(np.percentile(ratios, 25)), form
        assert rows[form]["time_ratio_q3"] == pytest.approx(np.percentile(ratios, 75)), form
    assert rows["slab_deploy"]["speedup_vs_baseline"] == pytest.approx(0.010 / 0.008)  # medians: 1 / 0.8
    assert rows["ln"]["time_ratio_paired"] == 1.0
    text = report.table(result)
    assert "paired time ratio" in text and "b=1: 0.75 [0.72-0.78]" in text


def test_csv_has_one_row_per_model_and_batch_size(quick_run):
    result, rows = quick_run
    assert [r["form"] for r in rows] == [r["form"] for r in result["results"]]
    assert all(float(r["median_ms"]) > 0 and float(r["gflop_per_s"]) > 0 for r in rows)


def test_table_names_every_form(quick_run):
    text = report.table(quick_run[0])
    for label in ("LayerNorm + softmax", "PRepBN, deploy form", "SLAB, deploy form", "GEMM reference"):
        assert label in text


@pytest.mark.parametrize("argv, message", [
    (["--batch_sizes", "0"], "--batch_sizes must be positive"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--warmup", "0"], "--warmup must be at least 1"),
    (["--families", "vgg"], "invalid choice"),
    (["--json", "/no/such/folder/out.json"], "its folder does not exist"),
])
def test_bad_input_is_one_message_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_flop_count_is_the_reference_formula_on_a_tiny_deit():
    c, n, depth, classes, patch = 32, 16, 2, 10, 16
    net = create_model("deit_tiny_prepbn", num_classes=classes, image_size=64, embed_dim=c, depth=depth,
                       num_heads=2, norm="ln").set_train(False)
    tokens = n + 1  # class token
    per_block = 2 * tokens * c * 3 * c + 2 * tokens * c * c + 2 * 2 * tokens * c * 4 * c + 4 * tokens * tokens * c
    expected = 2 * n * c * 3 * patch * patch + depth * per_block + 2 * c * classes
    assert count_flops(net, 64) == pytest.approx(expected)


def test_flop_count_of_sla_uses_the_linear_formula():
    c, n, depth, classes = 32, 16, 1, 10
    net = create_model("slab_deit_tiny", num_classes=classes, image_size=64, embed_dim=c, depth=depth,
                       num_heads=2).set_train(False)
    d = c // 2  # n = 16 tokens, head_dim 16: (Q Kᵀ) V order
    attention = 4 * n * c * min(n, d) + 2 * n * c + 2 * n * c * 25
    dense = 2 * n * c * 3 * c + 2 * n * c * c + 2 * 2 * n * c * 4 * c
    expected = 2 * n * c * 3 * 16 * 16 + depth * (dense + attention) + 2 * c * classes
    assert count_flops(net, 64) == pytest.approx(expected)
    # MindCV's O1 wrappers around every Dense (in training mode: the fused eval Mlp reads fc1's weight itself)
    auto_mixed_precision(net.set_train(True), "O1", amp_cast_list="[nn.Dense]")
    assert type(net.blocks[0].mlp.fc1).__name__ == "_OutputTo32"
    assert count_flops(net, 64) == pytest.approx(expected)


def _png_size(path):
    """(width, height) of a PNG file from its IHDR chunk; fails on anything that is not a PNG."""
    import struct
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_committed_benchmark_plot_is_a_small_png():
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "benchmark.png")
    width, height = _png_size(path)
    assert 600 <= width <= 3000 and 300 <= height <= 2000, (width, height)
    assert 10_000 < os.path.getsize(path) < 200_000


def test_plot_writes_a_png(quick_run, tmp_path):
    pytest.importorskip("matplotlib")
    report.plot(quick_run[0], str(tmp_path / "p.png"))
    width, height = _png_size(tmp_path / "p.png")
    assert width > 100 and height > 100


def test_child_peak_memory_is_its_own_not_the_parents():
    import multiprocessing as mp
    import numpy as np
    ballast = np.ones(300 * 2**20 // 8)  # 300 MB resident in this process only
    with mp.get_context("spawn").Pool(1) as pool:
        child_peak = pool.apply(children.peak_rss_mb)
    assert 0 < child_peak < children.peak_rss_mb() - 200 and ballast[-1] == 1.0
