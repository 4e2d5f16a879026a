"""The ablation tool (--quick): a complete, finite CSV and a valid PNG; the two ablation-only model switches."""
import csv
import math
import os

import numpy as np
import pytest
from PIL import Image

from slab_ms.experiments import ablation


def test_quick_run_writes_a_complete_finite_csv_and_a_png(tmp_path, monkeypatch, capsys):
    """By default into a new output/ablation/<date-time>/, so the same command runs again; an existing --csv is
    refused without --overwrite."""
    monkeypatch.chdir(tmp_path)
    argv = ["--quick", "--variants", "ln,bn_prog", "--seeds", "2"]
    assert ablation.main(argv) == 0
    (run,) = os.listdir(tmp_path / "output" / "ablation")
    out = tmp_path / "output" / "ablation" / run / "ablation.csv"
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == ablation.CSV_FIELDS
    epochs = ablation.QUICK["epochs"]
    assert sorted((r["variant"], int(r["seed"]), int(r["epoch"])) for r in rows) == sorted(
        (v, s, e) for v in ("ln", "bn_prog") for s in range(2) for e in range(1, epochs + 1))
    for row in rows:
        values = [float(row[k]) for k in ablation.CSV_FIELDS[3:]]
        assert all(math.isfinite(v) for v in values) and 0 <= float(row["val_acc"]) <= 1
    gamma = {(r["variant"], int(r["epoch"])): float(r["gamma"]) for r in rows if r["seed"] == "0"}
    assert gamma[("ln", epochs)] == 1.0 and gamma[("bn_prog", epochs)] == 0.0 and 0 < gamma[("bn_prog", 1)] < 1
    # a re-initialised seed (no recompilation) trains differently from seed 0, and deterministically
    first = [r["train_loss"] for r in rows if r["variant"] == "ln" and r["seed"] == "0"]
    second = [r["train_loss"] for r in rows if r["variant"] == "ln" and r["seed"] == "1"]
    assert first != second
    with Image.open(out.with_suffix(".png")) as image:
        image.verify()
    with Image.open(out.with_suffix(".png")) as image:
        assert image.format == "PNG" and 600 < image.size[0] < 2000 and 150 < image.size[1] < 800
    printed = capsys.readouterr().out
    assert "| `bn_prog` |" in printed and "epoch 2/2" in printed
    assert ablation.main(argv + ["--csv", str(out)]) == 2  # the outputs exist: refused without --overwrite
    assert "exists" in capsys.readouterr().err
    ablation.check_args(ablation.parse_args(argv))  # the same command again: a new folder, nothing refused


@pytest.mark.parametrize("argv, message", [(["--variants", "ln,nope"], "--variants"),
                                           (["--seeds", "0"], "--seeds"),
                                           (["--image_size", "15"], "multiple of --patch_size"),
                                           (["--data_dir", "/no/such/folder"], "does not exist")])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert ablation.main(["--quick", "--csv", str(tmp_path / "x.csv"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_progressive_bn_and_sla_without_dwc_are_what_they_say():
    import mindspore as ms
    from slab_ms import reparameterize_model
    from slab_ms.layers import PRepBN, RepBN, SimplifiedLinearAttention, TokenBatchNorm
    args = ablation.parse_args(["--quick"])
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        pbn = ablation.build(args, "bn_prog", 1, 10, total_steps=10)
        norms = [c for _, c in pbn.cells_and_names() if isinstance(c, PRepBN)]
        assert norms and all(type(c.norm2) is TokenBatchNorm and not isinstance(c.norm2, RepBN) for c in norms)
        x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32))
        pbn.set_train(False)
        folded = reparameterize_model(pbn)
        assert np.allclose(folded(x).asnumpy(), pbn(x).asnumpy(), atol=1e-5)
        no_dwc = ablation.build(args, "sla_nodwc", 1, 10, total_steps=10)
        with_dwc = ablation.build(args, "sla", 1, 10, total_steps=10)
        sla = [c for _, c in no_dwc.cells_and_names() if isinstance(c, SimplifiedLinearAttention)]
        assert sla and not any(c.use_dwc for c in sla) and not any("dwc" in p.name for p in no_dwc.get_parameters())
        assert any("dwc" in p.name for p in with_dwc.get_parameters())
        assert no_dwc(x).shape == (2, 10)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def test_gamma_trace_reads_the_in_graph_schedule_every_step(tmp_path):
    from slab_ms.experiments import gamma_trace
    png, table = tmp_path / "g.png", tmp_path / "g.csv"
    assert gamma_trace.main(["--quick", "--plot", str(png), "--csv", str(table)]) == 0
    with open(table, newline="") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    total = ablation.QUICK["epochs"] * (ablation.QUICK["train_images"] // ablation.QUICK["batch_size"])
    decay = int(ablation.parse_args(["--quick"]).prepbn_decay_ratio * total)
    assert [r["step"] for r in rows] == list(range(1, total + 1))
    assert [r["gamma"] for r in rows] == pytest.approx([max(0.0, 1 - s / decay) for s in range(1, total + 1)])
    assert all(math.isfinite(r["loss"]) and r["eta_min"] <= r["eta_mean"] <= r["eta_max"] for r in rows)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 600


def test_run_ablation_script_passes_its_arguments_on(tmp_path):
    import os
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(["bash", os.path.join(root, "scripts", "run_ablation.sh"), "--seeds", "0", "--csv",
                             str(tmp_path / "a.csv")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "ablation: error: --seeds must be >= 1" in result.stderr
    assert not (tmp_path / "a.csv").exists()
