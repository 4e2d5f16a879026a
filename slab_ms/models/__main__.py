"""The model table: ``python -m slab_ms.models --table [--models GLOB] [--format markdown|csv]``.

One row per registered SLAB model, built at full size (224², 1000 classes) without compiling a graph: our
trainable parameters against the official model's ``nn.Parameter`` count (the difference is the dead parameters
the reference creates and never uses, which we do not create), multiply-accumulates at 224² from
``slab_ms.layers.flops`` (one batch-1 PyNative forward; the paper's "FLOPs" are these MACs: DeiT-T 1.3 G, Swin-T
4.5 G), the norm and attention cells the model is made of, and the ImageNet top-1 the paper reports for the release.
"""
import argparse
import sys

TOOL = "slab_ms.models"

# Released models: official name, parameters of the official PyTorch model at 224², 1000 classes (all
# nn.Parameter elements), the dead parameters among them, and the paper's ImageNet-1k top-1.
RELEASED = {
    "deit_tiny_prepbn": ("deit_t_prepbn", 5_717_441, None, 73.6),
    "deit_small_prepbn": ("deit_s_prepbn", 22_069_889, None, 80.2),
    "slab_deit_tiny": ("slab_deit_t", 6_198_401, "cls_token (SLAB-DeiT pools its tokens)", 74.3),
    "slab_deit_small": ("slab_deit_s", 22_992_641, "cls_token (SLAB-DeiT pools its tokens)", 80.0),
    "pvt_tiny_prepbn": ("pvt_t_prepbn", 13_239_554, None, 76.0),
    "pvt_small_prepbn": ("pvt_s_prepbn", 24_507_801, None, 80.1),
    "pvt_medium_prepbn": ("pvt_m_prepbn", 44_253_117, None, 81.7),
    "slab_pvt_tiny": ("slab_pvt_t", 12_157_692, None, 76.5),
    "swin_tiny_prepbn": ("swin_t_prepbn", 28_288_383, None, 81.4),
    "slab_swin_tiny": ("slab_swin_t", 29_216_605, None, 81.8),
    "slab_swin_small": ("slab_swin_s", 50_552_965, None, 83.6),
    "slab_cswin_tiny": ("slab_cswin_t", 21_227_807, "attns.0.scale (1, 1, C) of the 6 SLA blocks, unused", 82.8),
}
COLUMNS = ("name", "official name", "params", "official params", "not created (dead)", "GMACs @224", "GFLOPs @224",
           "norm", "attention", "paper top-1")


def norm_text(net):
    """The norm cells of ``net`` by kind, with the γ schedule's T for PRepBN."""
    from mindspore import nn
    from ..layers import PRepBN, PRepBNSchedule, RepBN, TokenBatchNorm
    counts = {}
    for _, cell in net.cells_and_names():
        kind = ("PRepBN" if isinstance(cell, PRepBN) else "RepBN" if isinstance(cell, RepBN)
                else "BN" if isinstance(cell, TokenBatchNorm) else "LN" if isinstance(cell, nn.LayerNorm) else None)
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
    if "PRepBN" in counts:  # each PRepBN holds one LayerNorm and one RepBN
        counts.pop("LN", None), counts.pop("RepBN", None)
        schedule = PRepBNSchedule.of(net).state()
        counts[f"PRepBN (T={schedule['decay_steps'] // 1000}k)"] = counts.pop("PRepBN")
    return " + ".join(f"{kind} ×{n}" for kind, n in counts.items())


def attention_text(net):
    """The attention cells of ``net`` by kind: SLA (every Simplified Linear Attention cell), softmax (the plain
    ``Attention`` cell) or the cell's class name."""
    from ..layers import SimplifiedLinearAttention
    counts = {}
    for _, cell in net.cells_and_names():
        name = type(cell).__name__
        kind = ("SLA" if isinstance(cell, SimplifiedLinearAttention) else "softmax" if name == "Attention"
                else name if name.endswith("Attention") else None)
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
    return " + ".join(f"{kind} ×{n}" for kind, n in counts.items())


def model_row(name):
    """The table row of one registered model (a dict keyed by ``COLUMNS``)."""
    import mindcv
    from ..layers.flops import count_flops
    net = mindcv.create_model(name, num_classes=1000)
    params = sum(p.size for p in net.trainable_params())
    official, official_params, dead, top1 = RELEASED.get(name, ("–", None, None, None))
    flops = count_flops(net, 224)
    return {"name": name, "official name": official, "params": params, "official params": official_params,
            "not created (dead)": (official_params - params if official_params is not None else None, dead),
            "GMACs @224": flops / 2e9, "GFLOPs @224": flops / 1e9, "norm": norm_text(net),
            "attention": attention_text(net), "paper top-1": top1}


def _cell(key, value, markdown):
    if key == "not created (dead)":
        count, what = value
        if count is None:
            return "?"
        return "0" if count == 0 else f"{count:,}" + (f": {what}" if what and markdown else "")
    if value is None:
        return "–"
    if key in ("params", "official params"):
        return f"{value:,}" if markdown else str(value)
    if key in ("GMACs @224", "GFLOPs @224"):
        return f"{value:.2f}"
    if key == "paper top-1":
        return f"{value:.1f}"
    return f"`{value}`" if key == "name" and markdown else str(value)


def format_table(rows, fmt="markdown"):
    if fmt == "csv":
        import csv
        import io
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_cell(k, row[k], False) for k in COLUMNS])
        return out.getvalue().rstrip("\n")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(k, row[k], True) for k in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def _main(argv):
    from ..cli import UsageError
    parser = argparse.ArgumentParser(prog=TOOL, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--table", action="store_true", help="print the model table")
    parser.add_argument("--models", default="*", help="glob over the model names (default: all)")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    args = parser.parse_args(argv)
    if not args.table:
        raise UsageError("nothing to do: pass --table")
    from . import list_models
    names = list_models(args.models)
    if not names:
        raise UsageError(f"--models '{args.models}' matches none of: {', '.join(list_models())}")
    order = [n for n in RELEASED if n in names] + [n for n in names if n not in RELEASED]
    print(format_table([model_row(name) for name in order], args.format), flush=True)
    return 0


def main(argv=None):
    from ..cli import run
    return run(TOOL, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
