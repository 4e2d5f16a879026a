"""Evidence a reader looks at: every committed PNG under docs/ is a real, small picture; every relative link of the
README, docs/ and configs/*/README.md resolves; the model table tool prints what the README shows."""
import glob
import os
import re
import subprocess

import pytest
from PIL import Image

from parity_utils import official_params

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
    official = f"{official_params('slab_deit_tiny'):,}"
    assert cells[1:5] == ["slab_deit_t", "6,198,209", official, "192: cls_token (SLAB-DeiT pools its tokens)"]
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


def readme_code_blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return re.findall(r"```[a-z]*\n(.*?)```", f.read(), flags=re.S)


def test_readme_commands_after_the_demo_run_in_order(tmp_path, monkeypatch, capsys):
    """A new user after the demo: the `next:` commands the demo prints (as the README shows them), then the README's
    `python export.py`, each exits 0 in a checkout with the demo's data and a finished demo checkpoint (training itself
    is tested elsewhere). A later one-process demo run keeps the 2-worker demo's 440 optimizer steps, and
    `scripts/run_eval.sh` and `export.py` then pick the same newest checkpoint."""
    import shlex
    import shutil
    import yaml
    import mindspore as ms
    import slab_ms
    from slab_ms import export, validate
    from slab_ms.data import prepare_demo_dataset
    from test_export import finished
    from test_reparam import randomize
    from slab_ms.training import parse_args, parse_options
    from slab_ms.training.outputs import run_output_path, save_config

    shutil.copytree(os.path.join(ROOT, "configs", "demo"), tmp_path / "configs" / "demo")
    monkeypatch.chdir(tmp_path)
    config = "configs/demo/slab_deit_demo.yaml"
    with open(config, encoding="utf-8") as f:
        recipe = yaml.safe_load(f)
    prepare_demo_dataset(recipe["data_dir"])
    run = "./output/demo/20261205-010203"
    os.makedirs(run)
    net = slab_ms.create_model(recipe["model"], num_classes=10, image_size=recipe["image_size"],
                               **recipe["model_kwargs"])
    ms.save_checkpoint(finished(randomize(net)), f"{run}/{recipe['model']}.ckpt")
    save_config(run_output_path(run, recipe["model"], "config.yaml"), parse_options(["-c", config]))  # as train.py

    (demo_output,) = [b for b in readme_code_blocks() if "\nnext:" in b]
    commands = [line.split("next:")[-1].strip() for line in demo_output.splitlines()
                if line.startswith("next:") or line.startswith("       python")]
    deploy = next(b for b in readme_code_blocks() if b.startswith("python export.py "))
    commands.append(deploy.splitlines()[0].split("#")[0].strip())  # python export.py
    assert [c.split()[:2] for c in commands] == [["python", "validate.py"], ["python", "export.py"],
                                                 ["python", "export.py"]]
    tools = {"validate.py": validate.main, "export.py": export.main}
    for command in commands:
        argv = shlex.split(re.sub(r"\./output/demo/\d{8}-\d{6}", run, command))
        assert tools[argv[1]](argv[2:]) == 0, command
    out = capsys.readouterr().out
    assert f"using the newest checkpoint {run}/{recipe['model']}.ckpt (options {run}/" in out
    assert sorted(p for p in os.listdir() if p.endswith(".mindir")) == ["slab_deit_tiny-2.mindir",
                                                                         "slab_deit_tiny.mindir"]

    # the one-process demo: same recipe, global batch 64 = 2 workers x 32, so the same optimizer steps
    dry = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_standalone_train.sh"), "--dry_run"],
                         capture_output=True, text=True, check=True).stdout.split()
    args = parse_args(dry[2:])
    images = sum(len(files) for _, _, files in os.walk(os.path.join(recipe["data_dir"], "train")))
    assert args.batch_size == 2 * recipe["batch_size"]
    per_worker = -(-images // 2)  # the 2-worker demo: each rank reads half of the images, rounded up
    assert args.epochs * (images // args.batch_size) == recipe["epochs"] * (per_worker // recipe["batch_size"]) == 440
    os.makedirs(args.ckpt_dir)
    ms.save_checkpoint(net, os.path.join(args.ckpt_dir, f"{recipe['model']}.ckpt"))
    with open(os.path.join(ROOT, "scripts", "run_eval.sh"), encoding="utf-8") as f:
        (pick,) = [line.strip() for line in f if line.strip().startswith("CKPT=$(python")]
    picked = subprocess.run(["bash", "-c", f'{pick}; echo "$CKPT"'], capture_output=True, text=True, check=True,
                            env=dict(os.environ, PYTHONPATH=ROOT, GLOG_v="3")).stdout.strip()
    assert picked == export.newest_checkpoint() == os.path.join(args.ckpt_dir, f"{recipe['model']}.ckpt")
