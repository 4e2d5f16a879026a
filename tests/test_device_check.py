"""bash scripts/run_device_check.sh on CPU with a tiny budget: train at O2, fold, export, one table row per model."""
import os
import subprocess

import numpy as np
import pytest

from slab_ms import device_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(text):
    """{model: (numbers of the five columns, status)} of the printed table."""
    rows = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 7 and fields[6] in ("OK", "FAIL"):
            rows[fields[0]] = ([float("nan") if f == "-" else float(f) for f in fields[1:6]], " ".join(fields[6:]))
    return rows


def test_script_trains_folds_and_exports_each_model_and_prints_its_row(tmp_path):
    out = tmp_path / "check"
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_device_check.sh"), "--device_target", "CPU",
                             "--tiny", "--models", "slab_deit_tiny,llama_tiny", "--steps", "2", "--batch_size", "2",
                             "--output_dir", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    rows = _rows(result.stdout)
    assert list(rows) == ["slab_deit_tiny", "llama_tiny"]
    for (compile_s, step_ms, loss, deploy, mindir), status in rows.values():
        assert status == "OK" and compile_s > 0 and step_ms > 0 and np.isfinite(loss)
        assert 0 <= deploy <= 1e-4 and 0 <= mindir <= 1e-4  # outputs are O(0.1) here: the absolute tolerance
    assert "2 of 2 passed" in result.stdout
    assert sorted(os.listdir(out)) == ["llama_tiny.mindir", "slab_deit_tiny.mindir"]


def test_a_failing_model_is_a_fail_row_the_others_still_run_and_the_exit_status_is_1(tmp_path, capsys):
    argv = ["--tiny", "--models", "slab_deit_tiny,deit_tiny_prepbn", "--image_size", "30", "--output_dir",
            str(tmp_path)]
    assert device_check.main(argv) == 1
    rows = _rows(capsys.readouterr().out)
    assert list(rows) == ["slab_deit_tiny", "deit_tiny_prepbn"]
    assert all(status.startswith("FAIL UsageError: --image_size 30 does not fit") for _, status in rows.values())
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, message", [
    (["--models", "slab_deit_tiny,deit_huge"], "unknown --models deit_huge"),
    (["--steps", "0"], "must be positive"),
    (["--models", "slab_deit_tiny", "--output_dir", "{tmp}"], "already holds slab_deit_tiny.mindir"),
])
def test_bad_input_is_one_message_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "slab_deit_tiny.mindir").write_bytes(b"an earlier run's file")
    argv = [arg.format(tmp=tmp_path) for arg in argv] + (["--output_dir", str(tmp_path / "new")]
                                                          if "--output_dir" not in argv else [])
    assert device_check.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("device_check.py: error:") == 1
    assert (tmp_path / "slab_deit_tiny.mindir").read_bytes() == b"an earlier run's file"
