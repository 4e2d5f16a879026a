"""Evidence a reader looks at: every committed PNG under docs/ is a real, small picture; every relative link of the
README, docs/ and configs/*/README.md resolves; the model table tool prints what the README shows."""
import glob
import os
import re
import subprocess

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def committed(pattern):
    try:
        out = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist): every file there counts
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))
    return sorted(out.split())


def test_every_committed_png_under_docs_is_a_valid_picture_of_sensible_size():
    pngs = committed("docs/*.png")
    assert "docs/ablation.png" in pngs and "docs/gamma.png" in pngs
    for path in pngs:
        full = os.path.join(ROOT, path)
        assert 5_000 < os.path.getsize(full) < 400_000, path  # a picture, and small enough for the repository
        with Image.open(full) as image:
            image.verify()
        with Image.open(full) as image:
            assert image.format == "PNG", path
            width, height = image.size
            assert 300 <= width <= 2400 and 150 <= height <= 1600, (path, image.size)
            image.convert("L").load()
            low, high = image.convert("L").getextrema()
            assert high - low > 50, f"{path} is blank"


def markdown_files():
    return ["README.md", *committed("docs/*.md"), *committed("configs/*/README.md")]


def test_relative_links_of_the_readme_and_docs_resolve():
    checked = 0
    for doc in markdown_files():
        with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
            text = re.sub(r"```.*?```", "", f.read(), flags=re.S)  # links inside code blocks are not links
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), target.split("#")[0]))
            assert os.path.exists(path), f"{doc}: link '{target}' does not resolve"
            checked += 1
    assert checked >= 10


def test_model_table_prints_official_counts_and_macs(capsys):
    from slab_ms.models.__main__ import main
    assert main(["--table", "--models", "slab_deit_tiny"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `slab_deit_tiny`")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[1:5] == ["slab_deit_t", "6,198,209", "6,198,401", "192: cls_token (SLAB-DeiT pools its tokens)"]
    assert abs(float(cells[5]) - 1.1) / 1.1 < 0.05  # the paper's Table 6: 1.1 G (MACs)
    assert float(cells[6]) == pytest.approx(2 * float(cells[5]), abs=0.011)
    assert cells[7] == "PRepBN (T=60k) ×25" and cells[8] == "SLA ×12" and cells[9] == "74.3"
    assert main(["--table", "--models", "nothing*"]) == 2
    assert main([]) == 2


def test_readme_ablation_table_is_the_committed_csv():
    """The README's numbers are what docs/ablation.csv (the run that made docs/ablation.png) gives: 3 seeds of
    every variant, every epoch, all finite."""
    import math
    from slab_ms.experiments import ablation
    rows = ablation.read_csv(os.path.join(ROOT, "docs", "ablation.csv"))
    assert len(rows) == len(ablation.VARIANTS) * 3 * ablation.FULL["epochs"]
    assert all(math.isfinite(r[k]) for r in rows for k in ablation.CSV_FIELDS[3:])
    summary = ablation.summarize(rows, list(ablation.VARIANTS))
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert ablation.markdown_table(summary) in f.read()
