"""The benchmark runs end to end on tiny models and writes the documented JSON / CSV; no timing assertions."""
import csv
import json

import numpy as np
import pytest

from slab_ms import benchmark, create_model
from slab_ms.benchmark import children, families, report, stats
from slab_ms.benchmark.families import GEMM
from slab_ms.layers.flops import count_flops
from mindcv.utils.amp import auto_mixed_precision

from helpers import run_benchmark


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_benchmark(tmp_path_factory.mktemp("bench"),
                         ["--quick", "--families", "deit", "--batch_sizes", "1", "--repeats", "1"])


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
    measured = {"samples": samples, "train_samples": {}, "peaks": {}, "flops": {}, "profiles": {}, "threads": {},
                "counterparts": {}, "torch_ready": {}, "torch_found": None}
    result = stats.summarise(args, measured, (0, 0, 0), (0, 0, 0))
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
    (["--torch", "--official_code", "/no/such/folder"], "not a checkout of the official SLAB code"),
    (["--official_code", "."], "--official_code needs --torch"),
    (["--torch", "--torch_threads", "0"], "must be a positive count or 'best'"),
    (["--torch", "--torch_threads", "many"], "must be a positive count or 'best'"),
    (["--torch", "--torch_python", "/no/such/python"], "no such executable"),
    (["--torch", "--quick"], "no PyTorch counterpart"),
    (["--threads", "0"], "--runtime_num_threads must be at least 1"),
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


def test_threads_is_an_alias_of_runtime_num_threads():
    assert benchmark.parse_args(["--threads", "3"]).runtime_num_threads == 3
    assert benchmark.parse_args(["--runtime_num_threads", "5"]).runtime_num_threads == 5
    args = benchmark.parse_args(["--torch", "--torch_threads", "best"])
    assert args.torch_threads == "best" and benchmark.parse_args(["--torch", "--torch_threads", "2"]).torch_threads == 2


def test_official_code_is_the_folder_that_holds_models(tmp_path):
    (tmp_path / "classification" / "models").mkdir(parents=True)
    (tmp_path / "classification" / "models" / "prepbn.py").write_text("")
    for given in (tmp_path, tmp_path / "classification"):
        args = benchmark.parse_args(["--torch", "--official_code", str(given)])
        assert args.official_code == str(tmp_path / "classification")


def test_every_form_has_its_counterpart():
    """timm for the LayerNorm baseline where timm has one; the official model of the training form for both the
    training and the deploy form (the deploy form folded); nothing for the PRepBN / SLAB forms without the code."""
    assert families.torch_counterpart("deit", "ln")["model"] == "deit_tiny_patch16_224"
    assert families.torch_counterpart("swin", "ln")["model"] == "swin_tiny_patch4_window7_224"
    assert families.torch_counterpart("pvt", "ln") is None and families.torch_counterpart("cswin", "ln") is None
    expected = {("deit", "prepbn"): "deit_tiny_patch16_224_repbn",
                ("deit", "slab"): "deit_tiny_patch16_224_linear_repbn",
                ("swin", "prepbn"): "SwinTransformer", ("swin", "slab"): "SlabSwinTransformer",
                ("pvt", "prepbn"): "slab_pvt_tiny", ("pvt", "slab"): "slab_pvt_tiny",
                ("cswin", "prepbn"): "SLAB_CSWin_64_24181_tiny_224", ("cswin", "slab"): "SLAB_CSWin_64_24181_tiny_224"}
    for (family, form), factory in expected.items():
        assert families.torch_counterpart(family, form) is None
        training = families.torch_counterpart(family, form, "/code")
        deploy = families.torch_counterpart(family, form + "_deploy", "/code")
        assert training["model"][1] == factory and not training["deploy"] and training["official_code"] == "/code"
        assert deploy["model"] == training["model"] and deploy["kwargs"] == training["kwargs"] and deploy["deploy"]
        assert training["kwargs"]["drop_path_rate"] == 0.0
    # the layouts of the released SLAB models, and softmax everywhere for the PRepBN forms
    assert families.torch_counterpart("swin", "slab", "/c")["kwargs"]["attn_type"] == "LLSS"
    assert families.torch_counterpart("pvt", "slab", "/c")["kwargs"]["attn_type"] == "LLLL"
    assert families.torch_counterpart("pvt", "prepbn", "/c")["kwargs"]["attn_type"] == "SSSS"
    assert families.torch_counterpart("cswin", "slab", "/c")["kwargs"]["attn_type"] == "LLSS"
    assert families.counterpart_label(families.torch_counterpart("deit", "slab_deploy", "/c")) == \
        "official deit_tiny_patch16_224_linear_repbn, folded"


def _measured_with_torch():
    """Synthetic samples of DeiT (with counterparts for ln and slab_deploy, trained ln) and PVT (none)."""
    ln, sd, gemm = ("deit", "ln"), ("deit", "slab_deploy"), GEMM
    t_ln, t_sd = ("deit", "ln", "torch"), ("deit", "slab_deploy", "torch")
    pvt_ln = ("pvt", "ln")
    samples = {(0, ln, 1): [0.010, 0.020, 0.010], (0, sd, 1): [0.008, 0.012, 0.007], (0, gemm, 1): [0.1] * 3,
               (0, t_ln, 1): [0.020, 0.020, 0.025], (0, t_sd, 1): [0.016, 0.006, 0.014],
               (0, pvt_ln, 1): [0.03] * 3}
    counterparts = {("deit", "ln"): families.torch_counterpart("deit", "ln"),
                    ("deit", "slab_deploy"): families.torch_counterpart("deit", "slab_deploy", "/code")}
    return {"samples": samples, "train_samples": {(ln, 1): [0.2, 0.3, 0.25], (t_ln, 1): [0.5, 0.5, 0.6]},
            "peaks": {(t_ln, 1): 700.0, (ln, 1): 500.0}, "flops": {ln: 2e9, sd: 1e9}, "profiles": {},
            "threads": {(t_ln, 1): 2, (t_sd, 1): 1, (ln, 1): 4, (sd, 1): 4},
            "counterparts": counterparts, "torch_found": {"torch": "2", "timm": "1", "official": True},
            "torch_ready": {t_sd: {"threads": 1, "folded_norms": 25, "fold_max_abs_diff": 2e-7}}}


def test_ours_over_pytorch_in_rows_table_and_csv(tmp_path):
    """The ratio pairs each round of our form with its counterpart's in the same round: 0.5 / 2.0 / 0.5 -> median
    0.5 (the ratio of the medians would be 0.57); PVT's baseline has no counterpart: "—"."""
    args = benchmark.parse_args(["--families", "deit", "pvt", "--forms", "ln", "slab_deploy", "--batch_sizes", "1",
                                 "--repeats", "3", "--torch", "--train"])
    args.official_code = "/code"
    result = stats.summarise(args, _measured_with_torch(), (0, 0, 0), (0, 0, 0))
    rows = {(r["family"], r["form"], r["framework"]): r for r in result["results"]}
    ours, theirs = rows[("deit", "slab_deploy", "mindspore")], rows[("deit", "slab_deploy", "pytorch")]
    assert ours["ratio_vs_torch"] == pytest.approx(0.5) and theirs["ratio_vs_torch"] == pytest.approx(0.5)
    assert ours["ratio_vs_torch_q1"] == pytest.approx(0.5) and ours["ratio_vs_torch_q3"] == pytest.approx(1.25)
    assert ours["torch_median_ms"] == pytest.approx(14.0)
    assert theirs["threads"] == 1 and ours["threads"] == 4 and theirs["fold_max_abs_diff"] == 2e-7
    assert theirs["model"] == "official deit_tiny_patch16_224_linear_repbn, folded" and theirs["deploy"] is True
    assert theirs["gflop_per_image"] == pytest.approx(1.0)  # the counterpart has our form's architecture
    baseline = rows[("deit", "ln", "mindspore")]
    assert baseline["train_ratio_vs_torch"] == pytest.approx(0.25 / 0.5)
    assert rows[("deit", "ln", "pytorch")]["peak_rss_mb"] == 700.0
    assert rows[("pvt", "ln", "mindspore")]["ratio_vs_torch"] is None
    assert ("pvt", "ln", "pytorch") not in rows
    assert result["meta"]["torch"]["official_code"] == "/code"
    text = report.table(result)
    assert "PyTorch, SLAB, deploy form" in text and "ours ÷ PyTorch" in text
    assert "SLAB, deploy form       b=1: 0.50 [0.50-1.25]" in text
    assert "PVT-T    LayerNorm + softmax     b=1: —" in text
    assert "25 RepBN folded" in text and "ours ÷ PyTorch 0.50" in text and "quiet machine" not in text
    result["meta"]["load_average_end"] = [2.0 * result["meta"]["cpu_count"] + 1, 0, 0]
    assert "compare on a quiet machine" in report.table(result)  # a loaded host is named below the ratios
    report.write_csv(result, str(tmp_path / "t.csv"))
    report.write_json(result, str(tmp_path / "t.json"))
    with open(tmp_path / "t.csv", newline="") as f:
        csv_rows = {(r["family"], r["form"], r["framework"]): r for r in csv.DictReader(f)}
    assert float(csv_rows[("deit", "slab_deploy", "mindspore")]["ratio_vs_torch"]) == pytest.approx(0.5)
    assert csv_rows[("deit", "slab_deploy", "pytorch")]["threads"] == "1"
    assert float(csv_rows[("deit", "ln", "mindspore")]["train_ratio_vs_torch"]) == pytest.approx(0.5)
    assert csv_rows[("pvt", "ln", "mindspore")]["ratio_vs_torch"] == ""
    with open(tmp_path / "t.json") as f:
        assert json.load(f)["results"] == json.loads(json.dumps(result["results"]))


def test_plot_shows_the_counterparts(tmp_path):
    pytest.importorskip("matplotlib")
    args = benchmark.parse_args(["--families", "deit", "pvt", "--forms", "ln", "slab_deploy", "--batch_sizes", "1",
                                 "--repeats", "3", "--torch"])
    result = stats.summarise(args, _measured_with_torch(), (0, 0, 0), (0, 0, 0))
    report.plot(result, str(tmp_path / "p.png"))
    assert _png_size(tmp_path / "p.png")[0] > 100


@pytest.mark.parametrize("missing, official, line, timed", [
    ("torch", None, "torch does not import", []),
    ("timm", None, "timm does not import", []),
    (None, None, "no --official_code", [("deit", "ln")]),
])
def test_missing_pytorch_parts_are_one_line_and_leave_what_runs(missing, official, line, timed, tmp_path,
                                                                 monkeypatch, capsys):
    """The PyTorch interpreter's modules stand in as files: ``missing`` fails to import like an absent package."""
    for name in ("torch", "timm"):
        body = "raise ImportError('No module named %r')" % name if name == missing else "__version__ = '0'"
        (tmp_path / f"{name}.py").write_text(body + "\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    args = benchmark.parse_args(["--families", "deit", "pvt", "--torch"])
    counterparts, found = benchmark.torch_counterparts(args)
    assert sorted(counterparts) == timed
    err = capsys.readouterr().err
    assert line in err and len(err.strip().splitlines()) == 1
    if missing:
        assert found[missing] is None
