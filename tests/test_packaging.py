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
        assert f"slab_ms/{tool}.py" in names
        assert f"slab-{tool} = slab_ms.{tool}:main" in entry_points
    assert "slab_ms/layers/cpu_kernels.cc" in names  # compiled on first use by slab_ms.layers.cpu_kernels
    assert not [n for n in names if n.startswith(("tests/", "configs/"))]


@pytest.mark.parametrize("tool", TOOLS)
def test_python_m_tool_help_works_from_another_directory(tool, tmp_path):
    result = subprocess.run([sys.executable, "-m", f"slab_ms.{tool}", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: {tool}.py")
    assert "--ckpt_file" in result.stdout or tool == "benchmark"
