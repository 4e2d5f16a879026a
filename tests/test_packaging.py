"""The tools are part of the package: a wheel holds them with console scripts, and they run from anywhere."""
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("train", "validate", "export", "convert", "benchmark")


def test_wheel_holds_every_tool_and_its_console_script(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), ROOT], check=True, capture_output=True, timeout=300)
    (wheel,) = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
    with zipfile.ZipFile(tmp_path / wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for tool in TOOLS:
        assert f"slab_ms/{tool}.py" in names or f"slab_ms/{tool}/__main__.py" in names
        assert f"slab-{tool} = slab_ms.{tool}:main" in entry_points
    assert "slab_ms/layers/cpu_kernels.cc" in names  # compiled on first use by slab_ms.layers.cpu_kernels
    assert not [n for n in names if n.startswith(("tests/", "configs/"))]


@pytest.mark.parametrize("tool", TOOLS)
def test_python_m_tool_help_works_from_another_directory(tool, tmp_path):
    result = subprocess.run([sys.executable, "-m", f"slab_ms.{tool}", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    usage = "usage: python -m slab_ms.benchmark" if tool == "benchmark" else f"usage: {tool}.py"
    assert result.returncode == 0 and result.stdout.startswith(usage)
    assert "--ckpt_file" in result.stdout or tool == "benchmark"


QUIET_CONVERT = """
import sys
import numpy as np
import mindspore as ms
from slab_ms import cli
from slab_ms.convert import main
cli.set_context(type("Args", (), {"device_target": "CPU", "mode": 0, "runtime_num_threads": 1})())
print(ms.nn.Dense(3, 2)(ms.Tensor(np.ones((1, 3), np.float32))).shape)  # runs a graph on the thread setting
sys.exit(main(sys.argv[1:]))
"""


def test_a_tool_prints_no_mindspore_warning_and_convert_reads_the_class_count(tmp_path):
    """With MindSpore's warnings on (GLOG_v=2): one CPU thread set through the tools' device options and the
    conversion of an official .pth print no MindSpore line (no deprecation per tensor or for the thread setting, no
    "actor threads", no "not loaded" for the γ schedule the loader sets itself); without --num_classes the
    classifier gets the .pth's 10 classes."""
    dst = tmp_path / "deit.ckpt"
    result = subprocess.run(
        [sys.executable, "-c", QUIET_CONVERT, "--model", "deit_small_prepbn", "--file_name", str(dst), "--ckpt_file",
         os.path.join(ROOT, "tests", "fixtures", "official_small_deit_prepbn.pth"), "--model_kwargs",
         '{"image_size": 64, "embed_dim": 48, "depth": 2, "num_heads": 3}'],
        cwd=tmp_path, env=dict(os.environ, GLOG_v="2", PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for line in ("deprecated", "not loaded", "actor threads", "WARNING"):
        assert line not in output, output
    assert f"wrote {dst}" in result.stdout
    import mindspore as ms
    assert ms.load_checkpoint(str(dst))["head.weight"].shape == (10, 48)


@pytest.mark.parametrize("argv0, tool", [("-m", True), ("/usr/local/bin/slab-train", True),
                                         (os.path.join(ROOT, "export.py"), True), ("-c", False),
                                         (os.path.join(ROOT, "tests", "export.py"), False), ("my_script.py", False)])
def test_the_tools_and_only_they_quiet_mindspore_by_default(argv0, tool, monkeypatch):
    """A tool starting (python -m slab_ms.<tool>, a console script, the repository's wrappers) sets GLOG_v=3 before
    MindSpore loads, unless the user set it; a program that imports slab_ms keeps MindSpore's level."""
    import slab_ms
    monkeypatch.setattr(sys, "argv", [argv0])
    assert slab_ms._running_a_tool() is tool  # pylint: disable=protected-access
